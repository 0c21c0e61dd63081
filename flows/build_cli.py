"""How `bergson build` launches the build-index flow (its entry in flows/commands/): validation and
model loading while Prefect starts and, when this process starts its own Prefect API, the first
missing shard computed meanwhile (the head start), counted in the flow's summary."""

from bergson_core.config import BuildConfig

from .startup import overlapped


def _embedded_api() -> bool:
    """True when this process starts its own Prefect API (no server configured)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def launch_build(cfg: BuildConfig) -> dict:
    if cfg.dry_run:  # the plan of this build instead (flows/plan.py)
        from .commands import launch

        return launch("plan", cfg)
    from bergson_core.index.stamps import nothing_to_do

    done = nothing_to_do(cfg)  # every shard there, inputs unchanged: no model load, no Prefect start
    if done is None and cfg.append:
        from bergson_core.index.append import nothing_new

        done = nothing_new(cfg)  # an append already done
    if done is not None:
        return done
    import contextlib

    with contextlib.ExitStack() as held:  # the index's lease, held until the flow (which joins it) ends
        return _launch_build(cfg, held)


def _launch_build(cfg: BuildConfig, held) -> dict:
    def preload():  # imports torch inside the thread, so the API server starts first
        from bergson_core.index.build import prepare_build
        from bergson_core.lease import hold

        if cfg.fan_out == "workers":
            from .fanout import check_server

            check_server()  # before the lease, the model load and any head start
        held.enter_context(hold(cfg.index, cfg.storage_options))  # before anything is written
        if not _embedded_api():
            prepare_build(cfg, write=False)  # a server is up already: the flow does all the work
            return None
        # the embedded API takes several seconds to start: compute the first missing shard meanwhile,
        # exactly as its task would (same function, manifest written last); the flow then skips it
        return head_start(cfg, prepare_build(cfg))

    first = overlapped(preload)  # validate + load (+ the first shard) while Prefect starts
    from .build import build_index

    return count_head_start(build_index(cfg), first)


def head_start(cfg: BuildConfig, plan) -> list[dict]:
    """Compute the first missing shards, one per model replica, exactly as their tasks would."""
    from concurrent.futures import ThreadPoolExecutor

    from bergson_core.index.build import build_shard
    from bergson_core.model.replicas import replica_pool
    from tasks import progress

    first = plan.missing()[: len(replica_pool(cfg))]
    if not first:
        return []
    progress.start(sum(stop - start for _, start, stop in first), "extracting (while Prefect starts)", cfg.progress)
    try:
        with ThreadPoolExecutor(len(first)) as pool:
            jobs = [pool.submit(build_shard, cfg, shard, start, stop, progress.advance) for shard, start, stop in first]
            return [job.result() for job in jobs]
    finally:
        progress.close()


def count_head_start(summary: dict, first: list[dict] | None) -> dict:
    """The flow saw the head-start shards as already there: count them as computed by this run."""
    done = [r for r in first or [] if not r.get("skipped")]
    if not done:
        return summary
    out = dict(summary)
    redone = {r["shard"]: r["recomputed"] for r in done if r.get("recomputed")}
    if redone:
        out["shards_recomputed"] = {**summary.get("shards_recomputed", {}), **redone}
    tps = summary.get("tokens_per_second") or 0.0
    busy = (summary.get("tokens", 0) / tps if tps else 0.0) + sum(r.get("seconds", 0.0) for r in done)
    out["shards_computed"] += len(done)
    out["shards_skipped"] -= len(done)
    for key in ("tokens", "bytes", "empty_documents"):
        out[key] = out.get(key, 0) + sum(r.get(key, 0) for r in done)
    out["seconds"] = out.get("seconds", 0.0) + max(r.get("seconds", 0.0) for r in done)
    out["tokens_per_second"] = out["tokens"] / busy if busy else 0.0
    return out
