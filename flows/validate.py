"""Recipe: LDS of score files against a bank of retrained models.

plan the bank -> retrain the full corpus -> retrain every missing subset (fan-out, tag gpu) ->
check every run is stored -> LDS of each score file -> tables, plots, artifacts.
Finished runs are skipped, so a rerun after a crash only retrains what is missing, and a new score
file against a finished bank costs no retraining at all.
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from bergson_core import fs as fsu
from bergson_core.config.eval import ValidateConfig
from bergson_core.eval.bank import FULL_RUN, Bank, cost
from bergson_core.eval.report import markdown_table
from bergson_core.eval.scores import method_name
from tasks import artifacts
from tasks.evaluate import lds_report_task, lds_task, plan_bank, retrain_run

from .mapping import map_until_stored


@flow(name="validate", log_prints=True)
def validate(config: ValidateConfig) -> dict:
    t0 = time.perf_counter()
    plan = plan_bank(config)
    key = artifacts.artifact_key("validate", plan["recipe_hash"])
    tracker = artifacts.Progress(key + "-progress", len(plan["missing"]), f"Retrainings of {config.bank}")
    bank = Bank(config.bank, config.storage_options)
    runs = {}
    for group in ([FULL_RUN], [r for r in plan["runs"] if r != FULL_RUN]):  # first: its model is the one to attribute
        for result in map_until_stored(
                retrain_run, [r for r in group if r in plan["missing"]], group,
                lambda task, todo: task.map(unmapped(config), todo, unmapped(plan["recipe_hash"]),
                                            [plan["digests"][r] for r in todo]),
                bank.missing, tracker=tracker,
                incomplete=f"bank {config.bank} is still incomplete after retraining: rerun `bergson validate`"):
            runs[result["run"]] = result  # a redone run's result replaces its stale cached one
    names = config.names or [method_name(s) for s in config.scores]
    results = [f.result() for f in lds_task.map(unmapped(config), config.scores, names)]
    output = config.output or fsu.join(config.bank, "report")
    report = lds_report_task(config, results, output)
    _, _, manifests = bank.losses()
    summary = {
        "bank": config.bank,
        "recipe_hash": plan["recipe_hash"],
        "documents": plan["documents"],
        "queries": plan["queries"],
        "subsets": len(plan["runs"]) - 1,
        "retrained_now": sum(not r.get("skipped") for r in runs.values()),
        "cost": cost(manifests),
        "full_checkpoint": bank.read_run(FULL_RUN)[1].get("checkpoint"),
        "methods": report["summary"],
        "paths": report["paths"],
        "seconds": time.perf_counter() - t0,
    }
    if results:
        artifacts.table(key + "-lds", [{k: r[k] for k in ("method", "lds", "lds_stderr", "queries", "subsets")}
                                       for r in results], f"LDS per method against {config.bank}")
    artifacts.markdown(key + "-summary", _markdown(summary, report["markdown"]), f"Validation against {config.bank}")
    return summary


def _markdown(summary: dict, lds_markdown: str) -> str:
    c = summary["cost"]
    rows = [{"what": k, "value": v} for k, v in (
        ("bank", summary["bank"]), ("documents", summary["documents"]), ("queries", summary["queries"]),
        ("subsets", summary["subsets"]), ("retrained in this run", summary["retrained_now"]),
        ("cost", f"{c['retrainings']} retrainings x {c['seconds_per_retraining']:.2f} s = "
                 f"{c['retraining_seconds']:.1f} s"),
        ("full model", summary["full_checkpoint"]))]
    return "# Validation\n\n" + markdown_table(rows, [("what", "what"), ("value", "value")]) + "\n" + lds_markdown
