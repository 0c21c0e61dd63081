"""Options of the training-dynamics commands (`tracin`, `magic`), in the style of config.py: flat
pydantic models, so a CLI flag, a YAML key and a flow parameter are the same name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import CheckpointQueries, DataOptions, ModelOptions, QueryOptions, RunOptions
from .eval import TrainOptions


class TracInConfig(CheckpointQueries, RunOptions):
    """`bergson tracin`: TracIn (Pruthi et al. 2020) over several checkpoints' indexes."""

    indexes: list[str] = Field(..., description="One index per training checkpoint, each built by `bergson build` "
                               "with --model CHECKPOINT/model (same corpus and shard size), in training order.")
    learning_rates: list[float] | None = Field(
        None, description="Weight of each checkpoint (default: read from each checkpoint's trainer_state.json).")
    lr_weight: Literal["checkpoint", "interval"] = Field(
        "checkpoint", description="checkpoint: the learning rate of the checkpoint's last step (Pruthi et al.); "
        "interval: the sum of the learning rates of the steps since the previous checkpoint.")
    metric: Literal["inner", "cosine"] = Field("inner", description="Per-checkpoint score: inner product or cosine.")
    top_k: int = Field(0, ge=0, description="Documents kept per query (0 = every document, as `validate` needs).")
    output: str = Field(..., description="Output folder: topk.parquet, tracin.json, query gradients.")
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")
    device: str = Field("auto", description="Torch device for the query gradients; auto = cuda when present.")


class MagicConfig(QueryOptions, TrainOptions, DataOptions, ModelOptions):
    """`bergson magic`: exact metagradients of each query's loss after training w.r.t. every document's
    training weight. --model is the init and the training options are the recipe (as for `validate`)."""

    output: str = Field(..., description="Output folder: topk.parquet (every document, usable by `bergson "
                        "validate`), magic.json (memory and time of the run).")
    checkpointing: Literal["every", "sqrt", "log"] = Field(
        "sqrt", description="Checkpointing of the training states for the backward pass: every (keep all "
        "T states), sqrt (keep every sqrt(T)-th, recompute segments), log (bisection: log2 T states, "
        "T log2 T recomputed steps).")
    weights: Literal["document", "token"] = Field(
        "document", description="Differentiate w.r.t. one training weight per document, or per (document, "
        "predicted token); token also writes token_scores.parquet (topk.parquet then sums each document's tokens).")
    aggregate: Literal["individual", "sum"] = Field(
        "individual", description="One backward pass per query, or one for the sum of the query losses.")
    query_batch: int = Field(16, gt=0, description="Queries whose backward passes run together (vmapped "
                             "vector-Jacobian products: fewer recomputations, more memory).")
    queries_per_task: int = Field(0, ge=0, description="Queries per task (each task trains forward once and "
                                  "runs a backward pass per query; 0 = all in one task).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options.")
