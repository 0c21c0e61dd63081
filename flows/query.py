"""Recipe: answer prompts from an index.

(--faiss: the FAISS index, built once by flows/faiss_index.py) -> prompt gradients with the index's
spec -> top-k and bottom-k by streaming the shards (or one FAISS search) -> OUTPUT/query.parquet.
"""

from __future__ import annotations

from prefect import flow
from prefect.cache_policies import NO_CACHE

from bergson_core.config.query import QueryConfig
from tasks.policy import gpu_task

from .faiss_index import build_faiss


@gpu_task("answer-prompts", cache_policy=NO_CACHE)
def answer(config: QueryConfig) -> dict:
    from bergson_core.scoring.query import QueryEngine

    engine = QueryEngine(config)
    if config.faiss:
        engine.open_faiss()
    return engine.ask(config.text or None)


@flow(name="query-index", log_prints=True)
def query(config: QueryConfig) -> dict:
    """Prompts from config.text or config.queries; returns the first `show` rows per prompt and side."""
    config.check()
    if config.faiss:
        build_faiss(config)
    return answer(config)
