"""Recipe: TRAK over an ensemble of models (Park et al. 2023).

per model, one task each (fan-out): query gradients, losses for the 1 - p correction, the kernel
(Phi^T Phi + lambda I)^-1 in the index's projected space, preconditioned queries -> the ensemble
mean of the scores, streamed over every index's shards -> topk.parquet + a table artifact.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from bergson_core.config.estimators import TrakConfig
from tasks import artifacts
from tasks.estimators import trak_model, trak_score


@flow(name="trak", log_prints=True)
def trak(config: TrakConfig) -> dict:
    parts = [f.result() for f in trak_model.map(unmapped(config), list(range(len(config.indexes))))]
    summary = trak_score(config, parts)
    key = artifacts.artifact_key("trak", os.path.basename(config.queries.rstrip("/")), str(len(config.indexes)))
    rows = [{"model": p["model"], "index": p["index"], "mean 1-p (corpus)": p["mean_one_minus_p_corpus"],
             "kernel trace": p["kernel_trace"]} for p in parts]
    artifacts.table(key, rows, f"TRAK over {len(rows)} model(s) -> {summary['output']}")
    return summary
