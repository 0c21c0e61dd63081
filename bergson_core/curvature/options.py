"""Options of curvature fits and of applying a fitted preconditioner, declared once with help text
(the same pydantic pattern as bergson_core.config, so flows and the CLI can reuse the fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StatsOptions(_Options):
    """How curvature statistics are gathered (the map step)."""

    fisher: Literal["empirical", "true"] = Field(
        "empirical", description="Fisher from dataset labels (empirical) or labels sampled from the model (true)."
    )
    fisher_seed: int = Field(0, description="Seed of the true-Fisher label samples (per document).")
    unit_normalize: bool = Field(
        False, description="Gradient covariance: unit-normalise each stored row before H = sum g g^T."
    )


class FitOptions(_Options):
    """How a preconditioner is fitted from reduced statistics."""

    mix_lambda: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Gradient covariance: weight of the query covariance in "
        "H = lambda H_query + (1 - lambda) H_corpus; default: chosen from the two spectra.",
    )
    target_downweight_components: int = Field(
        1000, gt=0,
        description="Gradient covariance: lambda is chosen so that the sorted eigenvalue curves of the "
        "weighted query and corpus covariances cross at this component (TrackStar, Chang et al. 2024).",
    )


class ApplyOptions(_Options):
    """How a fitted preconditioner is inverted when applied to gradients."""

    damping: float = Field(0.1, ge=0.0, description="Damping added to every eigenvalue before inverting.")
    damping_mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: damping x the mean eigenvalue of each module; absolute: as given."
    )
    power: float = Field(
        -1.0, description="Power of the damped curvature: -1 (influence, one side) or -0.5 (both sides, cosine)."
    )
    pseudo_inverse: bool = Field(
        False, description="Pseudo-inverse: drop eigenvalues below pinv_rtol x the largest instead of damping."
    )
    pinv_rtol: float = Field(1e-6, gt=0.0, description="Relative cut-off of the pseudo-inverse.")
