"""Configuration of the curvature commands (`bergson fit`, `bergson trackstar`, `bergson ekfac`),
declared once as pydantic models like bergson_core.config: the same classes give the CLI flags, the
YAML file, the flow parameters and the dashboard form.

Torch-free on purpose: the CLI builds its flags from these classes before anything heavy is
imported. The option groups of the curvature library (StatsOptions, FitOptions, ApplyOptions) live
here and are re-exported by bergson_core.curvature.
"""

from __future__ import annotations

import os
import pkgutil
from typing import ClassVar, Literal

from pydantic import Field

from ..errors import ConfigError
from .base import BuildConfig, IndexQueries, ModelOptions, OptionalIndexQueries, RunOptions, ScoreConfig, _Options

# The strategies of bergson_core.curvature: the module names in curvature/strategies/ (each module
# registers the strategy of that name; a test checks the two lists agree), read from the folder so
# that `bergson --help` does not import torch and a new strategy is one new file.
STRATEGY_NAMES = tuple(sorted(
    m.name for m in pkgutil.iter_modules([os.path.join(os.path.dirname(__file__), "..", "curvature", "strategies")])
))
Strategy = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# -- option groups of the curvature library --------------------------------------------------------
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


class DampingOptions(_Options):
    """How a fitted curvature is inverted (damping or pseudo-inverse)."""

    damping: float = Field(0.1, ge=0.0, description="Damping added to every eigenvalue before inverting.")
    damping_mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: damping x the mean eigenvalue of each module; absolute: as given."
    )
    pseudo_inverse: bool = Field(
        False, description="Pseudo-inverse: drop eigenvalues below pinv_rtol x the largest instead of damping."
    )
    pinv_rtol: float = Field(1e-6, gt=0.0, description="Relative cut-off of the pseudo-inverse.")


class ApplyOptions(DampingOptions):
    """How a fitted preconditioner is inverted when applied to gradients."""

    power: float = Field(
        -1.0, description="Power of the damped curvature: -1 (influence, one side) or -0.5 (both sides, cosine)."
    )


def applies_to_both_sides(opts: ApplyOptions) -> bool:
    """Power -1 preconditions the queries only (g_q^T H^-1 g_d); any other power, e.g. -0.5, is
    applied to queries and documents alike (<H^-1/2 g_q, H^-1/2 g_d>, TrackStar)."""
    return float(opts.power) != -1.0


def apply_options(cfg) -> ApplyOptions:
    return ApplyOptions(**{k: getattr(cfg, k) for k in ApplyOptions.model_fields})


def _run_fields(cfg) -> dict:
    return {k: getattr(cfg, k) for k in RunOptions.model_fields}


# -- bergson fit -------------------------------------------------------------------------------
class FitConfig(ApplyOptions, FitOptions, StatsOptions, OptionalIndexQueries, RunOptions, ModelOptions):
    """`bergson fit`: map curvature statistics over an index's shards, reduce them, fit a preconditioner."""

    index: str = Field(..., description="Index folder built by `bergson build` (local path or s3://).")
    strategy: Strategy = Field("ekfac", description="Preconditioner to fit.")
    name: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="Name of the fitted preconditioner: INDEX/precond/NAME (default: the strategy).",
    )
    stats_source: Literal["auto", "model", "rows"] = Field(
        "auto",
        description="Where statistics come from: model passes over the corpus, or the index's stored "
        "rows (autocorr, diagonal, shampoo and EK-FAC's eigenvalue pass; KFAC factors always need the "
        "model). auto = rows for autocorr, the model otherwise.",
    )
    full_space: bool = Field(
        False, description="Fit in the full per-module gradient space (p=0) of the index's modules instead of "
        "the index's projection (model passes only).",
    )
    query_output: str | None = Field(
        None, description="Folder of the query gradients used by autocorr's query mix "
        "(default: INDEX/scores/<queries-name>, shared with `bergson score`).",
    )

    @property
    def output_name(self) -> str:
        return self.name or self.strategy

    def source(self) -> str:
        """The resolved statistics source (model or rows); raises ConfigError for impossible pairs."""
        src = self.stats_source
        if src == "auto":
            src = "rows" if self.strategy == "autocorr" else "model"
        if self.strategy == "autocorr" and src != "rows":
            raise ConfigError("autocorr statistics come from the index's stored rows: use --stats-source rows or auto")
        if src == "rows" and self.full_space:
            raise ConfigError("--full-space needs model passes: stored rows live in the index's projection")
        if src == "rows" and self.fisher == "true":
            raise ConfigError("stored rows carry empirical-Fisher gradients: use --stats-source model for --fisher true")
        if self.queries and self.strategy != "autocorr":
            raise ConfigError("--queries only mixes the query covariance into the autocorr strategy")
        return src

    def query_score_config(self) -> ScoreConfig:
        """The ScoreConfig whose query-gradient step gives this fit's query rows."""
        return ScoreConfig(index=self.index, output=self.query_output, model=self.model, dtype=self.dtype,
                           device=self.device, revision=self.revision, gguf_file=self.gguf_file,
                           **self.query_fields(), **_run_fields(self))


# -- bergson trackstar -------------------------------------------------------------------------
class _RecipeOptions(_Options):
    top_k: int = Field(10, gt=0, description="Documents kept per query.")
    show: int = Field(5, ge=0, description="Documents shown per query in the terminal and the dashboard table "
                      "(topk.parquet holds all top-k).")
    output: str | None = Field(
        None, description="Output folder of topk.parquet and the query gradients (default: INDEX/scores/<queries-name>-<recipe>)."
    )
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")
    aggregate: Literal["individual", "mean", "max"] = Field(
        "individual", description="Score each query, or the mean / max over all queries as one."
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "queries"


class _Recipe(_RecipeOptions, DampingOptions, IndexQueries, BuildConfig):
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Name of the fitted preconditioner (default: the recipe's name)."
    )

    RECIPE: ClassVar[str] = ""

    def output_url(self) -> str:
        from .. import fs as fsu

        return self.output.rstrip("/") if self.output else fsu.join(self.index, "scores", f"{_stem(self.queries)}-{self.RECIPE}")

    def build_config(self, **overrides) -> BuildConfig:
        return BuildConfig(**{k: getattr(self, k) for k in BuildConfig.model_fields}, **overrides)

    def _fit_fields(self) -> dict:
        return dict(index=self.index, name=self.name or self.RECIPE, query_output=self.output_url(),
                    model=self.model, revision=self.revision, gguf_file=self.gguf_file, dtype=self.dtype,
                    device=self.device, **_run_fields(self),
                    **{k: getattr(self, k) for k in DampingOptions.model_fields})

    def score_config(self, metric: str) -> ScoreConfig:
        return ScoreConfig(index=self.index, queries=self.queries, output=self.output_url(), metric=metric,
                           preconditioner=self.name or self.RECIPE, top_k=self.top_k, show=self.show, block_rows=self.block_rows,
                           aggregate=self.aggregate, model=self.model, revision=self.revision,
                           gguf_file=self.gguf_file, dtype=self.dtype, device=self.device,
                           **self.query_fields(queries=False), **_run_fields(self))


class TrackstarConfig(FitOptions, _Recipe):
    """`bergson trackstar`: TrackStar (Chang et al. 2024) in one command: build an index of
    (optimizer-normalised) projected gradients, fit the unit-normalised gradient covariance of the
    corpus mixed with the queries', score cosine similarity of H^-1/2-preconditioned gradients."""

    RECIPE: ClassVar[str] = "trackstar"

    def fit_config(self) -> FitConfig:
        return FitConfig(strategy="autocorr", stats_source="rows", unit_normalize=True, power=-0.5,
                         mix_lambda=self.mix_lambda, target_downweight_components=self.target_downweight_components,
                         **self.query_fields(), **self._fit_fields())

    def score_config(self) -> ScoreConfig:  # type: ignore[override]
        return super().score_config("cosine")


class EkfacConfig(_Recipe):
    """`bergson ekfac`: EK-FAC influence (George et al. 2018; Grosse et al. 2023) in one command: fit
    EK-FAC over the corpus, precondition the query gradients, score them against corpus gradients."""

    RECIPE: ClassVar[str] = "ekfac"
    projection_dim: int | None = Field(
        None, ge=0, description="Projection p of projected mode (default 16); exact mode keeps full gradients (0).",
    )
    mode: Literal["auto", "exact", "projected"] = Field(
        "auto",
        description="exact: the corpus gradients are recomputed unprojected (stored in INDEX as float32) and EK-FAC "
        "is fitted on full gradients: exact influence up to the EK-FAC approximation. projected: an APPROXIMATION: EK-FAC fitted in the random "
        "projection of the index (its eigenvalue pass over the stored rows) and scored against the projected "
        "rows, so scores only approximate exact ones (Johnson-Lindenstrauss); cheap for large corpora. "
        "auto: exact when full float32 gradients of the corpus fit in --exact-max-bytes (or as --projection-dim says: "
        "0 exact, p > 0 projected).",
    )
    corpus_gradients: Literal["auto", "stored", "recompute"] = Field(
        "auto",
        description="Exact mode: where the corpus gradients scored against the queries come from. stored: build "
        "an index of full float32 gradients and stream its shards in bounded blocks; recompute: recompute them "
        "block by block while scoring (as kronfluence does), writing no gradients. auto: stored when that index "
        "is already complete (reading costs no model pass), recompute otherwise (storing costs the same "
        "gradient pass plus writing and reading every gradient). Scores are the same either way.",
    )
    exact_max_bytes: int = Field(
        2 << 30, gt=0, description="auto mode picks exact while documents x full row width x 4 bytes stays below this."
    )
    fisher: Literal["empirical", "true"] = Field("empirical", description=StatsOptions.model_fields["fisher"].description)
    fisher_seed: int = Field(0, description=StatsOptions.model_fields["fisher_seed"].description)

    def build_config(self, mode: str) -> BuildConfig:  # type: ignore[override]
        """The index this recipe builds: full float32 gradients (exact) or the projected index."""
        fields = {k: getattr(self, k) for k in BuildConfig.model_fields}
        if mode == "exact":
            fields.update(projection_dim=0, grad_dtype="float32")
        else:
            fields["projection_dim"] = 16 if self.projection_dim is None else self.projection_dim
        return BuildConfig(**fields)

    def fit_config(self, mode: str) -> FitConfig:
        rows = mode == "projected" and self.fisher == "empirical"  # stored rows carry empirical gradients
        return FitConfig(strategy="ekfac", stats_source="rows" if rows else "model", power=-1.0,
                         fisher=self.fisher, fisher_seed=self.fisher_seed, **self._fit_fields())

    def score_config(self) -> ScoreConfig:  # type: ignore[override]
        return super().score_config("inner")


__all__ = [
    "STRATEGY_NAMES",
    "ApplyOptions",
    "DampingOptions",
    "EkfacConfig",
    "FitConfig",
    "FitOptions",
    "StatsOptions",
    "TrackstarConfig",
    "applies_to_both_sides",
    "apply_options",
]