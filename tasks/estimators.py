"""Tasks of the estimator flows (TRAK): thin wrappers around bergson_core.methods.trak.run."""

from __future__ import annotations

from bergson_core.config.estimators import TrakConfig

from .policy import gpu_task, step_task


@gpu_task("trak-model")
def trak_model(config: TrakConfig, k: int) -> dict:
    """One model of the ensemble: its query gradients (cached), losses, kernel and preconditioned queries,
    written to OUTPUT/models/model-k.arrow."""
    from bergson_core.methods.trak.run import model_queries

    return model_queries(config, k)


@step_task("trak-score")
def trak_score(config: TrakConfig, parts: list[dict]) -> dict:
    """The ensemble mean over every index's shards streamed together -> topk.parquet and trak.json."""
    from bergson_core.methods.trak.run import ensemble_scores

    return ensemble_scores(config, parts)
