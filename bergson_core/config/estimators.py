"""Options of the estimator commands that score through stored indexes with their own curvature
(`trak`, `lissa`, `arnoldi`), in the style of config/dynamics.py: flat pydantic models, one per command."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import CheckpointQueries, IndexQueries, ModelOptions, RunOptions, _Options
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


class CurvatureProductOptions(_Options):
    """The curvature whose inverse LiSSA and Arnoldi apply: the mean over the index's corpus of each
    document's loss Hessian w.r.t. the index's tracked modules, through the model."""

    hessian: Literal["ggn", "true"] = Field("ggn", description="ggn: Gauss-Newton J^T H_z J (positive "
                                            "semi-definite); true: the Hessian (reverse-over-reverse autograd).")
    curvature_batch: int = Field(32, gt=0, description="Documents per batch of a curvature-vector product.")
    query_batch: int = Field(64, gt=0, description="Query vectors multiplied together in one batched backward.")
    damping: float = Field(0.01, ge=0.0, description="lambda of (H + lambda I)^-1.")
    damping_mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: damping x the largest eigenvalue estimate; absolute: as given.")
    seed: int = Field(0, description="Seed of the start vectors and of LiSSA's document batches.")


class _SecondOrderConfig(CurvatureProductOptions, IndexQueries, RunOptions, ModelOptions):
    index: str = Field(..., description="Index built by `bergson build` (--projection-dim 0 scores against full "
                       "gradients; a projected index is scored through its projection, an approximation).")
    top_k: int = Field(0, ge=0, description="Documents kept per query (0 = every document, as `validate` needs).")
    output: str = Field(..., description="Output folder: topk.parquet, a summary JSON, the preconditioned queries.")
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")


class LissaConfig(_SecondOrderConfig):
    """`bergson lissa`: (H + lambda I)^-1 g_q by LiSSA (Agarwal et al. 2017), scored against the index."""

    depth: int = Field(100, gt=0, description="Recursion depth (curvature-vector products per query block).")
    scale: float | None = Field(None, gt=0.0, description="s of the recursion, above the largest eigenvalue "
                                "(default: 1.5 x (the power-iteration estimate + lambda); with --lissa-batch, the largest estimate over the "
                                "corpus and 4 random batches).")
    lissa_batch: int = Field(0, ge=0, description="Documents of the curvature at each step, drawn at random "
                             "(0 = the whole corpus every step: deterministic).")
    power_steps: int = Field(20, gt=0, description="Power-iteration steps estimating the largest eigenvalue.")


class ArnoldiConfig(_SecondOrderConfig):
    """`bergson arnoldi`: Arnoldi influence (Schioppa et al. 2022): the top eigenpairs of H, the inverse in
    their span."""

    iterations: int = Field(50, gt=0, description="Arnoldi iterations (curvature-vector products).")
    rank: int = Field(20, gt=0, description="Eigenpairs kept (largest magnitude).")
