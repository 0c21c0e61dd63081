"""Recipe: multi-checkpoint TracIn.

query gradients at every checkpoint (fan-out, one task each) -> lr-weighted streaming scores over the
checkpoints' shards -> topk.parquet + artifacts.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from bergson_core.config.dynamics import TracInConfig
from tasks import artifacts
from tasks.dynamics import tracin_query_gradients, tracin_score


@flow(name="tracin", log_prints=True)
def tracin(config: TracInConfig) -> dict:
    files = [f.result() for f in tracin_query_gradients.map(unmapped(config), list(range(len(config.indexes))))]
    summary = tracin_score(config, files)
    key = artifacts.artifact_key("tracin", os.path.basename(config.queries.rstrip("/")), str(len(config.indexes)))
    rows = [{"checkpoint": k, "index": ix, "learning_rate": lr}
            for k, (ix, lr) in enumerate(zip(config.indexes, summary["learning_rates"]))]
    artifacts.table(key, rows, f"TracIn over {len(rows)} checkpoints -> {summary['output']}")
    return summary
