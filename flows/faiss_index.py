"""Recipe: a FAISS index over an index's gradients, for `bergson query --faiss FACTORY`.

plan -> (already built with this key: done) -> train on rows sampled over all shards
     -> one task per block of shards adds its rows to a copy of the trained index -> merge in block order
     -> INDEX/faiss/<factory>-<hash>/index.faiss + index.json (last).
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from bergson_core.config.query import QueryConfig
from tasks import faiss

from .runners import task_runner


@flow(name="build-faiss-index", log_prints=True, task_runner=task_runner())
def build_faiss(config: QueryConfig) -> dict:
    t0 = time.perf_counter()
    plan = faiss.plan(config)
    summary = {"faiss": plan["url"], "factory": config.faiss, "blocks": len(plan["blocks"])}
    if plan["built"]:
        return {**summary, "built_now": False}
    trained = faiss.train(config, plan)
    parts = faiss.add_block.map(unmapped(config), unmapped(plan), list(range(len(plan["blocks"]))))
    rows = sum(p["rows"] for p in parts.result())
    faiss.merge(config, plan)
    return {**summary, **trained, "rows": rows, "built_now": True, "seconds": time.perf_counter() - t0}
