"""Tasks of the score flow: query gradients, then streaming top-k over the shards."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bergson_core.config import ScoreConfig
from bergson_core.scoring.run import ensure_query_gradients, run_topk

from . import progress
from .policy import gpu_task, step_task


@gpu_task("query-gradients", cache_policy=NO_CACHE)  # reuse is decided by the store
def query_gradients(config: ScoreConfig, need_shards: bool = True) -> dict:
    """Gradients of the queries with the index's spec (reused when already written); need_shards=False
    for a spec-only index whose corpus gradients are recomputed while scoring (exact EK-FAC)."""
    manifest = ensure_query_gradients(config, need_shards)
    return {k: v for k, v in manifest.items() if k != "texts"}


@step_task("score-shards", cache_policy=NO_CACHE)
def score_shards(config: ScoreConfig, transform=None) -> dict:
    """Stream every shard in blocks, keep the top-k per query, write topk.parquet."""
    from bergson_core.index.store import Index

    shards = Index(config.index, config.storage_options).meta()["num_shards"]
    bar = progress.start(shards, "scoring", config.progress, unit="shard")
    try:
        return run_topk(config, on_shard=lambda manifest: bar.update(1), transform=transform)
    finally:
        progress.close()
