"""Recipe: build a gradient index.

plan the shards -> extract every missing shard (fan-out, tag gpu) -> check all shards exist ->
summary artifact. Finished shards are skipped, so a rerun after a crash only does what is missing.
"""

from __future__ import annotations

import time
from functools import partial

from prefect import flow, unmapped

from bergson_core.config import BuildConfig
from tasks import artifacts, progress
from tasks.build import extract_shard, plan_index

from .mapping import map_until_stored
from .runners import task_runner


@flow(name="build-index", log_prints=True, task_runner=task_runner())  # BERGSON_TASK_RUNNER, see runners.py
def build_index(config: BuildConfig) -> dict:
    from prefect.runtime import flow_run

    from bergson_core.lease import hold

    with hold(config.index, config.storage_options, run_id=flow_run.id):  # one build per index at a time
        return _build(config)


def _build(config: BuildConfig) -> dict:
    t0 = time.perf_counter()
    plan = plan_index(config)
    key = artifacts.artifact_key("build", plan["meta"]["spec_hash"])
    tracker = artifacts.Progress(key + "-progress", len(plan["missing"]), f"Shards of {config.index}")
    extra = {}
    if config.fan_out == "workers":  # blocks of shards as child runs on the pool's workers
        done, counts = _fanned_out(config, plan)
        results = {r["shard"]: r for r in done}
        extra = {"block_runs": counts["blocks"], "blocks_adopted": counts["adopted"], "blocks_retried": counts["retried"]}
    else:
        results = _in_this_run(config, plan, tracker)
    for shard, why in plan.get("bad", {}).items():  # found by the plan; a head start may have redone some
        results.setdefault(int(shard), {"shard": int(shard)}).setdefault("recomputed", why)
    summary = _summary(config, plan, list(results.values()), time.perf_counter() - t0, extra)
    artifacts.markdown(key + "-summary", summary["markdown"], f"Build of {config.index}")
    artifacts.link(key + "-index", config.index, "The gradient index (index.json + Arrow shards)")
    return {k: v for k, v in summary.items() if k != "markdown"}


def _in_this_run(config: BuildConfig, plan: dict, tracker) -> dict[int, dict]:
    bad = {int(k) for k in plan.get("bad", {})}
    todo = [s for s in plan["missing"] if s[0] not in bad]
    redo = [s for s in plan["missing"] if s[0] in bad]  # a cached task result would skip these
    progress.start(sum(stop - start for _, start, stop in plan["missing"]), "extracting", config.progress)
    try:
        stored = dict(submit=partial(_extract, config), missing=partial(_missing, config), tracker=tracker,
                      cached_as_skipped=True,
                      incomplete=f"index {config.index} is still incomplete after the build: rerun `bergson build`")
        # shards the plan found corrupt: a cached task result would skip them, so bypass the cache
        done = map_until_stored(extract_shard.with_options(refresh_cache=True), redo, [], **stored) if redo else []
        done += map_until_stored(extract_shard, todo, plan["shards"], **stored)
        return {r["shard"]: r for r in done}  # a redone shard's result replaces its stale cached one
    finally:
        progress.close()


def _fanned_out(config: BuildConfig, plan: dict) -> tuple[list[dict], dict]:
    """The missing shards computed by child runs (flows/fanout.py); their manifests from the block summaries."""
    from bergson_core.errors import StoreError
    from bergson_core.index.store import Index

    from .fanout import fan_out

    blocks = fan_out(config, plan)
    index = Index(config.index, config.storage_options)
    if _missing(config, plan["missing"]):
        raise StoreError(f"index {config.index} is still incomplete after the build: rerun `bergson build`")
    known = index.block_summaries()
    busy = blocks["block_seconds"] / max(1, len(plan["missing"]))  # child run time, spread over their shards
    return [{**known.get(i, {"shard": i}), "seconds": busy} for i, _, _ in plan["missing"]], blocks


def _extract(config: BuildConfig, task, shards) -> list:
    ids, starts, stops = zip(*shards)
    return task.map(unmapped(config), shard=list(ids), start=list(starts), stop=list(stops))


def _missing(config: BuildConfig, shards) -> list:
    from bergson_core.index.store import Index

    _, listed = Index(config.index, config.storage_options).listing()  # one listing, not a request per shard
    return [s for s in shards if s[0] not in listed]


def _summary(config: BuildConfig, plan: dict, results: list[dict], seconds: float, extra: dict) -> dict:
    computed = [r for r in results if not r.get("skipped")]
    tokens = sum(r.get("tokens", 0) for r in computed)
    busy = sum(r.get("seconds", 0.0) for r in computed)
    out = {
        "index": config.index,
        "spec_hash": plan["meta"]["spec_hash"],
        "documents": plan["meta"]["dataset"]["rows"],
        "shards": len(plan["shards"]),
        "shards_computed": len(computed),
        "shards_skipped": len(plan["shards"]) - len(computed),
        "tokens": tokens,
        "bytes": sum(r.get("bytes", 0) for r in computed),
        "empty_documents": sum(r.get("empty_documents", 0) for r in computed),
        "tokens_per_second": tokens / busy if busy else 0.0,
        "seconds": seconds,
        **extra,
        "shards_recomputed": {r["shard"]: r["recomputed"] for r in results if r.get("recomputed")},
    }
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:,.1f} |" if isinstance(v, float) else f"| {k.replace('_', ' ')} | {v} |"
                     for k, v in out.items() if k != "shards_recomputed")
    rows += "".join(f"\n| recomputed shard {k} | {why} |" for k, why in out["shards_recomputed"].items())
    out["markdown"] = f"# Gradient index build\n\n| what | value |\n|---|---|\n{rows}\n"
    return out
