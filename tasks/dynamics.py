"""Tasks of the training-dynamics flows (TracIn, MAGIC): thin wrappers around bergson_core.methods.tracin.run and
bergson_core.methods.magic.run."""

from __future__ import annotations

from bergson_core.config.dynamics import MagicConfig, TracInConfig

from .policy import gpu_task, step_task


@gpu_task("tracin-query-gradients")
def tracin_query_gradients(config: TracInConfig, k: int) -> str:
    """Query gradients at checkpoint k (index k's spec), written to OUTPUT/queries/checkpoint-k.arrow;
    reused when a file for the same index spec and queries is already there."""
    from bergson_core import fs as fsu
    from bergson_core.index.store import Index
    from bergson_core.methods.tracin.run import QUERY_DIR, score_config
    from bergson_core.scoring.queries import cached_query_gradients

    meta = Index(config.indexes[k], config.storage_options).meta()
    base = fsu.join(config.output.rstrip("/"), QUERY_DIR, f"checkpoint-{k}")
    return cached_query_gradients(meta, score_config(config, config.indexes[k]), base)["path"]


@step_task("tracin-score")
def tracin_score(config: TracInConfig, query_files: list[str]) -> dict:
    """Stream every checkpoint's shards together; sum lr-weighted scores; write topk.parquet."""
    from bergson_core.index.store import grad_matrix, read_grads
    from bergson_core.methods.tracin.run import (
        learning_rates,
        open_indexes,
        tracin_topk,
        write_tracin,
    )

    indexes, metas = open_indexes(config)
    lrs = learning_rates(config, metas)
    queries = [grad_matrix(read_grads(f, config.storage_options)) for f in query_files]
    scores, docs = tracin_topk(indexes, metas, queries, lrs, config.metric, config.top_k, config.block_rows)
    return write_tracin(config, metas, scores, docs, lrs)


@gpu_task("magic-part")
def magic_part(config: MagicConfig, lo: int, hi: int) -> dict:
    """Train forward once, then one backward pass per query in [lo, hi) (or one for their sum);
    the metagradients go to OUTPUT/parts (reused when already there for the same recipe). A retry
    continues from the progress the failed try saved under OUTPUT/parts/<lo>-<hi>.state."""
    from bergson_core.methods.magic.run import run_part

    return run_part(config, lo, hi)


@step_task("magic-scores")
def magic_scores(config: MagicConfig, parts: list[dict]) -> dict:
    """score = -dQ/dw for every (query, document) -> topk.parquet and magic.json."""
    from bergson_core.methods.magic.run import write_scores

    return write_scores(config, parts)
