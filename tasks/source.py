"""Tasks of the SOURCE flow: thin wrappers around bergson_core.methods.source.run (segment fits, final query
gradients, scores). The per-checkpoint index builds and KFAC statistics run as the ordinary
build-index and fit-preconditioner subflows."""

from __future__ import annotations

from bergson_core.config.source import SourceConfig

from .policy import gpu_task, step_task


@step_task("source-segment")
def source_segment(config: SourceConfig, plan: dict, segment: int) -> dict:
    """EK-FAC of one segment (averaged KFAC factors, eigenvalues corrected on its checkpoints' rows),
    reused when fitted from the same inputs."""
    from bergson_core.methods.source.run import segment_fit

    return segment_fit(config, plan, segment)


@gpu_task("source-query-gradients")
def source_query_gradients(config: SourceConfig, plan: dict) -> str:
    """The queries' gradients at the final checkpoint (OUTPUT/queries/final.arrow, reused)."""
    from bergson_core.methods.source.run import final_query_gradients

    return final_query_gradients(config, plan)


@step_task("source-score")
def source_score(config: SourceConfig, plan: dict, query_file: str) -> dict:
    """Carry the query back through the segments, stream every checkpoint's shards, write topk.parquet."""
    from bergson_core.methods.source.run import score_source

    return score_source(config, plan, query_file)
