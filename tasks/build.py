"""Tasks of the build flow: plan the shards, extract one shard."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build

from . import progress
from .policy import cache_key, gpu_task, step_task


@step_task("plan-index", cache_policy=NO_CACHE)  # always look at the store: a retried run must see the shards done since
def plan_index(config: BuildConfig) -> dict:
    """Validate inputs, write or check index.json, and list the shards still missing."""
    plan = prepare_build(config)
    missing = plan.missing()  # also the shards that fail verification: recomputed, past the task cache
    return {
        "meta": {k: plan.meta[k] for k in ("spec_hash", "row_width", "num_shards", "dataset", "grad_dtype")},
        "shards": plan.shards,
        "missing": missing,
        "bad": {str(k): v for k, v in plan.bad.items()},
    }


def _extract_key(context, parameters) -> str:
    cfg: BuildConfig = parameters["config"]
    return cache_key("extract", cfg.spec_hash(), cfg.index, parameters["shard"])


@gpu_task("extract-shard", cache_key_fn=_extract_key)
def extract_shard(config: BuildConfig, shard: int, start: int, stop: int) -> dict:
    """Per-document gradients of rows [start, stop) written as one Arrow shard + manifest."""
    return build_shard(config, shard, start, stop, on_batch=progress.advance)


@step_task("plan-block", cache_policy=NO_CACHE)
def plan_block(config: BuildConfig, shards: list[int]) -> list[tuple[int, int, int]]:
    """Validate inputs against the index.json the parent wrote; (shard, start, stop) of `shards`."""
    want = set(shards)
    return [s for s in prepare_build(config, write=False).shards if s[0] in want]
