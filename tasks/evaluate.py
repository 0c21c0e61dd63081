"""Tasks of the evaluation flows: plan a bank, retrain one run (fan-out, tag gpu), LDS and recall of
one score file, the reports."""

from __future__ import annotations

from bergson_core.config.eval import RecallConfig, ValidateConfig
from bergson_core.eval.evaluate import lds_of_file, lds_report, recall_of_file, recall_report
from bergson_core.eval.retrain import prepare_bank, retrain

from .policy import cache_key, gpu_task, step_task


@step_task("plan-bank")
def plan_bank(config: ValidateConfig) -> dict:
    """Validate the recipe, draw the subsets, write or check bank.json, list the runs still missing."""
    plan = prepare_bank(config)
    meta = plan.meta
    return {
        "recipe_hash": meta["recipe_hash"],
        "documents": meta["dataset"]["rows"],
        "queries": meta["queries"]["rows"],
        "runs": plan.runs,
        "digests": dict(zip(plan.runs, ["all", *meta["subset_digests"]])),
        "missing": plan.missing(),
    }


def _retrain_key(context, parameters) -> str:
    cfg: ValidateConfig = parameters["config"]
    return cache_key("retrain", parameters["recipe_hash"], parameters["digest"], parameters["run"], cfg.bank)


@gpu_task("retrain-subset", cache_key_fn=_retrain_key)
def retrain_run(config: ValidateConfig, run: str, recipe_hash: str, digest: str) -> dict:
    """Retrain from the init on one subset (or the full corpus) and store its query losses.
    Cached by recipe hash + subset + code version; a finished run in the bank is skipped."""
    return retrain(config, run)


@step_task("lds-of-scores")
def lds_task(config: ValidateConfig, score_file: str, name: str) -> dict:
    """LDS of one score file against the finished bank (no retraining)."""
    return lds_of_file(config.bank, score_file, name, config.storage_options)


@step_task("lds-report")
def lds_report_task(config: ValidateConfig, results: list[dict], output: str) -> dict:
    """Parquet tables and PNG plots of the LDS results."""
    return lds_report(config.bank, results, output, config.storage_options)


@step_task("recall-of-scores")
def recall_task(config: RecallConfig, score_file: str, name: str) -> dict:
    """MRR and recall@k of one score file against the queries' supporting documents."""
    return recall_of_file(score_file, name, config.queries, config.support_column, config.ks,
                          config.storage_options)


@step_task("recall-report")
def recall_report_task(config: RecallConfig, results: list[dict], output: str) -> dict:
    return recall_report(results, config.ks, output, config.storage_options)
