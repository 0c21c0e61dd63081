"""Options of the estimator commands that score through stored indexes with their own curvature
(`trak`), in the style of config/dynamics.py: flat pydantic models, one per command."""

from __future__ import annotations

from pydantic import Field

from .base import CheckpointQueries, RunOptions
from .curvature import DampingOptions


class TrakConfig(DampingOptions, CheckpointQueries, RunOptions):
    """`bergson trak`: TRAK (Park et al. 2023) over an ensemble of models, one index each."""

    indexes: list[str] = Field(..., description="One index per model of the ensemble (independently trained models "
                               "or checkpoints of one run), each built by `bergson build --model MODEL` over the same "
                               "corpus with the same --shard-size; a different --projection-seed per model is TRAK's "
                               "choice.")
    damping: float = Field(0.1, ge=0.0, description="lambda of (Phi^T Phi + lambda I)^-1, per model.")
    max_kernel_dim: int = Field(16384, gt=0, description="Refuse indexes wider than this: the kernel is a D x D "
                                "float64 matrix per model (build with a --projection-dim that keeps D below it).")
    top_k: int = Field(0, ge=0, description="Documents kept per query (0 = every document, as `validate` needs).")
    output: str = Field(..., description="Output folder: topk.parquet, trak.json, per-model query files.")
    block_rows: int = Field(4096, gt=0, description="Corpus rows read per block (bounds memory).")
    device: str = Field("auto", description="Torch device of the model passes; auto = cuda when present.")
