"""Recipe: MAGIC metagradients.

query chunks (fan-out; each task trains forward once and runs a backward pass through training per
query) -> score = -dQ/dw for every document -> topk.parquet, magic.json + artifacts.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from bergson_core.config.dynamics import MagicConfig
from tasks import artifacts
from tasks.dynamics import magic_part, magic_scores


@flow(name="magic", log_prints=True)
def magic(config: MagicConfig) -> dict:
    from bergson_core.index.build import open_corpus
    from bergson_core.methods.magic.run import query_chunks

    n = len(open_corpus(config.queries, config.query_split, config.storage_options))
    chunks = query_chunks(n, config.queries_per_task)
    futures = magic_part.map(unmapped(config), [lo for lo, _ in chunks], [hi for _, hi in chunks])
    summary = magic_scores(config, [f.result() for f in futures])
    key = artifacts.artifact_key("magic", os.path.basename(config.queries.rstrip("/")), config.checkpointing)
    artifacts.table(key, [{k: v for k, v in summary.items() if k != "parts"}],
                    f"MAGIC metagradients ({config.checkpointing} checkpointing) -> {summary['output']}")
    return summary
