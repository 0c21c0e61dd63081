"""Options of `bergson source` (SOURCE, Bae et al. 2024), in the style of config.py: one flat pydantic
model, so a CLI flag, a YAML key, a flow parameter and the dashboard form are the same name.
Torch-free: the CLI builds its flags from it before anything heavy is imported."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import BuildConfig, DataOptions, GradientOptions, QueryOptions, RunOptions


class SourceConfig(QueryOptions, RunOptions, GradientOptions, DataOptions):
    """`bergson source`: approximate unrolling over training checkpoints grouped in segments."""

    checkpoints: list[str] = Field(
        ..., description="Trainer checkpoint folders, any order (sorted by step; each with trainer_state.json, its model "
        "in MODEL/ or the folder itself, and optimizer.safetensors for the Adam variant). The latest one is the "
        "trained model whose query losses are attributed.")
    segments: int | None = Field(
        None, gt=0, description="Number of segments the checkpoints are grouped into, in order and as evenly as "
        "possible (default: one per checkpoint). Each segment's curvature and document gradients are averaged "
        "over its checkpoints.")
    optimizer: Literal["auto", "sgd", "adam"] = Field(
        "auto", description="adam: the Adam variant (gradients and curvature in the space rescaled by each "
        "segment's Adam preconditioner, from the checkpoints' optimizer states); sgd: plain SGD unrolling "
        "(momentum m folds in as lr / (1 - m)); auto: as the trainer ran.")
    segment_learning_rates: list[float] | None = Field(
        None, description="Total learning rate of each segment (default: summed from the trainer's per-step "
        "history in trainer_state.json).")
    damping: float = Field(
        0.0, ge=0.0, description="Damping d: each segment's curvature becomes H + d I (0 = the paper's plain "
        "unrolling; flat directions then respond with the segment's whole learning rate).")
    damping_mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: damping x the mean eigenvalue of each module; absolute: as given.")
    projection_dim: int = Field(
        0, ge=0, description="Random projection p of the per-checkpoint indexes (0 = full gradients; the Adam "
        "variant needs 0, its elementwise rescaling does not commute with the projection).")
    grad_dtype: Literal["float16", "float32"] = Field("float32", description="Stored gradient dtype.")
    dtype: Literal["auto", "float32", "float64", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype for the gradient and curvature passes.")
    device: str = Field("auto", description="Torch device; auto = cuda when present, else cpu.")
    fisher: Literal["empirical", "true"] = Field(
        "empirical", description="KFAC factors from dataset labels (empirical) or labels sampled from the model.")
    shard_size: int = Field(1000, gt=0, description="Documents per gradient shard of each checkpoint's index.")
    top_k: int = Field(0, ge=0, description="Documents kept per query (0 = every document, as `validate` needs).")
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")
    output: str = Field(..., description="Output folder: topk.parquet, source.json, per-checkpoint indexes, "
                        "segment curvatures and query gradients.")

    def index_url(self, k: int) -> str:
        from .. import fs as fsu

        return fsu.join(self.output.rstrip("/"), "indexes", f"checkpoint-{k}")

    def build_config(self, k: int, model: str) -> BuildConfig:
        """The index of checkpoint k: the corpus's gradients at that checkpoint's weights."""
        fields = {f: getattr(self, f) for f in BuildConfig.model_fields if f in type(self).model_fields}
        return BuildConfig(**fields, index=self.index_url(k), model=model)
