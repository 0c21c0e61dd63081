"""Options of the training-dynamics commands (`tracin`, `magic`), in the style of config.py: flat
pydantic models, so a CLI flag, a YAML key and a flow parameter are the same name."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config import RunOptions


class TracInConfig(RunOptions):
    """`bergson tracin`: TracIn (Pruthi et al. 2020) over several checkpoints' indexes."""

    indexes: list[str] = Field(..., description="One index per training checkpoint, each built by `bergson build` "
                               "with --model CHECKPOINT/model (same corpus and shard size), in training order.")
    queries: str = Field(..., description="Query file or dataset (same formats as --dataset).")
    query_text_column: str | None = Field(None, description="Query text column (default: the indexes').")
    query_prompt_column: str | None = Field(None, description="Query prompt column (default: the indexes').")
    query_completion_column: str | None = Field(None, description="Query completion column (default: the indexes').")
    query_split: str = Field("train", description="Split for hub ids and DatasetDict folders of queries.")
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
