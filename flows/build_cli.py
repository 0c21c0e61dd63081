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
    def preload():  # imports torch inside the thread, so the API server starts first
        from bergson_core.index.build import prepare_build

        if not _embedded_api():
            prepare_build(cfg, write=False)  # a server is up already: the flow does all the work
            return None
        # the embedded API takes several seconds to start: compute the first missing shard meanwhile,
        # exactly as its task would (same function, manifest written last); the flow then skips it
        return head_start(cfg, prepare_build(cfg))

    first = overlapped(preload)  # validate + load (+ the first shard) while Prefect starts
    from .build import build_index

    return count_head_start(build_index(cfg), first)


def head_start(cfg: BuildConfig, plan) -> dict | None:
    from bergson_core.index.build import build_shard
    from tasks import progress

    missing = plan.missing()
    if not missing:
        return None
    shard, start, stop = missing[0]
    progress.start(stop - start, "extracting (first shard, while Prefect starts)", cfg.progress)
    try:
        return build_shard(cfg, shard, start, stop, on_batch=progress.advance)
    finally:
        progress.close()


def count_head_start(summary: dict, first: dict | None) -> dict:
    """The flow saw the head-start shard as already there: count it as computed by this run."""
    if not first or first.get("skipped"):
        return summary
    out = dict(summary)
    tps = summary.get("tokens_per_second") or 0.0
    busy = (summary.get("tokens", 0) / tps if tps else 0.0) + first.get("seconds", 0.0)  # extraction seconds
    out["shards_computed"] += 1
    out["shards_skipped"] -= 1
    for key in ("tokens", "bytes", "empty_documents"):
        out[key] = out.get(key, 0) + first.get(key, 0)
    out["seconds"] = out.get("seconds", 0.0) + first.get("seconds", 0.0)
    out["tokens_per_second"] = out["tokens"] / busy if busy else 0.0
    return out
