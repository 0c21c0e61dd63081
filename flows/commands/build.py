"""`bergson build INDEX --model M --dataset D`: compute per-document gradients into an index."""

from bergson_core.config import BuildConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "build", 10
HELP = "Compute per-document gradients of a corpus into an index (local path or s3:// URL)."


def add_arguments(parser) -> None:
    add_model_arguments(parser, BuildConfig, positional=("index",))


def run(args) -> int:
    from .. import render

    render.build_summary(run_build(build_config(BuildConfig, args)))
    return 0


def _embedded_api() -> bool:
    """True when this process starts its own Prefect API (no server configured)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def run_build(cfg: BuildConfig) -> dict:
    import contextlib

    with contextlib.ExitStack() as held:  # the index's lease, held until the flow (which joins it) ends
        return _run_build(cfg, held)


def _run_build(cfg: BuildConfig, held) -> dict:
    def preload():  # imports torch inside the thread, so the API server starts first
        from bergson_core.build import prepare_build
        from bergson_core.lease import hold

        held.enter_context(hold(cfg.index, cfg.storage_options))  # before anything is written
        if not _embedded_api():
            prepare_build(cfg, write=False)  # a server is up already: the flow does all the work
            return None
        # the embedded API takes several seconds to start: compute the first missing shard meanwhile,
        # exactly as its task would (same function, manifest written last); the flow then skips it
        return head_start(cfg, prepare_build(cfg))

    first = overlapped(preload)  # validate + load (+ the first shard) while Prefect starts
    from ..build import build_index

    return count_head_start(build_index(cfg), first)


def head_start(cfg: BuildConfig, plan) -> dict | None:
    from bergson_core.build import build_shard
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
    if first.get("recomputed"):
        out["shards_recomputed"] = {**summary.get("shards_recomputed", {}), first["shard"]: first["recomputed"]}
    tps = summary.get("tokens_per_second") or 0.0
    busy = (summary.get("tokens", 0) / tps if tps else 0.0) + first.get("seconds", 0.0)  # extraction seconds
    out["shards_computed"] += 1
    out["shards_skipped"] -= 1
    for key in ("tokens", "bytes", "empty_documents"):
        out[key] = out.get(key, 0) + first.get(key, 0)
    out["seconds"] = out.get("seconds", 0.0) + first.get("seconds", 0.0)
    out["tokens_per_second"] = out["tokens"] / busy if busy else 0.0
    return out
