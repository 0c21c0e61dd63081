"""Tasks of the fit flow: plan, one shard's partial statistics (map), reduce, fit and save.

The map task is cached on spec hash + index + strategy + pass + shard + code version and skips a
shard whose partial is already in the store; reduce and fit skip themselves when their output was
made from the same inputs. Retries are for transient faults only (tasks/policy.py).
"""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.config.curvature import EkfacConfig, FitConfig
from bergson_core.curvature.run import (
    fit_and_save,
    lambda_pass,
    plan_fit,
    reduce_pass,
    stats_shard,
)

from . import progress
from .policy import cache_key, gpu_task, step_task


@step_task("plan-fit")
def plan(config: FitConfig) -> dict:
    """Validate the options against the index; list the statistic passes and their shards."""
    return plan_fit(config)


@step_task("plan-ekfac-lambda")
def plan_lambda(config: FitConfig, fit_plan: dict, basis: str) -> dict:
    """EK-FAC's second pass, in the eigenbasis of the saved KFAC fit `basis`."""
    return lambda_pass(config, fit_plan, basis)


def _stats_key(context, parameters) -> str:
    cfg: FitConfig = parameters["config"]
    p = parameters["pass_"]
    return cache_key("stats", p["settings"]["index_spec_hash"], cfg.index, cfg.strategy, p["dir"], parameters["shard"])


@gpu_task("stats-shard", cache_key_fn=_stats_key)
def stats(config: FitConfig, pass_: dict, shard: int, start: int, stop: int) -> dict:
    """One shard's partial statistics -> INDEX/stats/<pass dir>/shard-i (skipped when present)."""
    return stats_shard(config, pass_, shard, start, stop, on_batch=progress.advance)


@step_task("reduce-stats")
def reduce(config: FitConfig, pass_: dict) -> dict:
    """Sum the pass's partials into INDEX/stats/<pass dir>/total."""
    return reduce_pass(config, pass_)


@step_task("fit-preconditioner")
def fit(config: FitConfig, strategy: str, totals: dict, name: str, base: str | None = None) -> dict:
    """float64 fit from the reduced totals -> INDEX/precond/<name>/."""
    result = fit_and_save(config, strategy, totals, name, base)
    return {k: v for k, v in result.items() if k != "meta"} | {"mix_lambda": result["meta"].get("mix_lambda")}


@step_task("plan-exact-scoring", cache_policy=NO_CACHE)  # always look at the store
def plan_exact(config: EkfacConfig, build: BuildConfig) -> dict:
    """Exact EK-FAC: stream stored corpus gradients or recompute them while scoring (and why)."""
    from bergson_core.curvature.run import pick_corpus_gradients

    return pick_corpus_gradients(config, build)


@step_task("write-index-spec", cache_policy=NO_CACHE)
def write_index_spec(build: BuildConfig) -> dict:
    """index.json only (spec, modules, corpus fingerprint): what the fit and the recomputing scorer
    read when no gradient shard is stored."""
    from bergson_core.index.build import prepare_build

    plan = prepare_build(build)
    return {"index": build.index, "spec_hash": plan.meta["spec_hash"], "documents": plan.meta["dataset"]["rows"]}


@gpu_task("score-recomputed", cache_policy=NO_CACHE)
def score_recomputed(config: ScoreConfig) -> dict:
    """Recompute the corpus gradients block by block, keep the top-k per query, write topk.parquet
    (exact EK-FAC without stored full gradients; memory does not grow with the corpus)."""
    from bergson_core.index.store import Index
    from bergson_core.scoring.run import recompute_topk

    rows = Index(config.index, config.storage_options).meta()["dataset"]["rows"]
    bar = progress.start(rows, "scoring (recomputed gradients)", config.progress)
    try:
        return recompute_topk(config, on_rows=bar.update)
    finally:
        progress.close()
