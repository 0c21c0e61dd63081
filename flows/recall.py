"""Recipe: MRR and recall@k of known supporting documents in each score file's rankings.

recall of each score file (fan-out) -> tables -> artifacts.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from bergson_core import fs as fsu
from bergson_core.config.eval import RecallConfig
from bergson_core.eval.scores import method_name, resolve_score_file
from tasks import artifacts
from tasks.evaluate import recall_report_task, recall_task


def default_output(config: RecallConfig) -> str:
    if config.output:
        return config.output
    first = resolve_score_file(config.scores[0], config.storage_options)
    return fsu.join(os.path.dirname(first.rstrip("/")) or ".", "recall")


@flow(name="recall", log_prints=True)
def recall(config: RecallConfig) -> dict:
    names = config.names or [method_name(s) for s in config.scores]
    results = [f.result() for f in recall_task.map(unmapped(config), config.scores, names)]
    output = default_output(config)
    report = recall_report_task(config, results, output)
    key = artifacts.artifact_key("recall", os.path.basename(config.queries), *names)
    artifacts.table(key + "-table", [{k: v for k, v in r.items() if k != "score_file"} for r in report["summary"]],
                    f"MRR and recall@k against {config.queries}")
    artifacts.markdown(key + "-summary", report["markdown"], f"Recall against {config.queries}")
    return {"methods": report["summary"], "paths": report["paths"], "markdown": report["markdown"]}
