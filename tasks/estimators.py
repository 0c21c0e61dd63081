"""Tasks of the estimator flows (TRAK, LiSSA, Arnoldi): thin wrappers around bergson_core.methods.trak.run and
bergson_core.methods.hessian.run."""

from __future__ import annotations

from bergson_core.config.estimators import ArnoldiConfig, LissaConfig, TrakConfig

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


@gpu_task("precondition-queries")
def precondition_queries(config: LissaConfig | ArnoldiConfig) -> dict:
    """LiSSA's or Arnoldi's (H + lambda I)^-1 on the query gradients through the index's model, written to
    OUTPUT/preconditioned_queries.arrow (in the index's space)."""
    from bergson_core.methods.hessian.run import precondition

    return precondition(config)


@step_task("score-preconditioned")
def score_preconditioned(config: LissaConfig | ArnoldiConfig, part: dict, name: str) -> dict:
    """Inner products of the preconditioned queries with every stored row -> topk.parquet and NAME.json."""
    from bergson_core.methods.hessian.run import score

    return score(config, part, name)
