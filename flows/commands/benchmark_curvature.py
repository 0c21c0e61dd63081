"""Rows of `bergson benchmark` for the curvature recipes (TrackStar, EK-FAC influence), registered
through the benchmark's explicit registry (benchmark.methods()). Kept in their own file so the benchmark module stays one
owner's; benchmark.methods() lists these rows."""

from __future__ import annotations

import os
import shutil

from .benchmark import Bench, method


def _fresh(bench: Bench, slug: str) -> tuple[str, str]:
    index, out = os.path.join(bench.workdir, "indexes", slug), os.path.join(bench.workdir, "scores", slug)
    for folder in (index, out):
        shutil.rmtree(folder, ignore_errors=True)  # time the whole method, not a reuse
    return index, out


def _common(bench: Bench, index: str, out: str) -> dict:
    return {"index": index, "model": bench.model, "dataset": bench.corpus, "id_column": "id",
            "queries": bench.queries, "query_prompt_column": "prompt", "query_completion_column": "completion",
            "loss_reduction": "mean", "grad_dtype": "float32", "top_k": bench.documents, "output": out,
            "progress": False}


def _optimizer_state(bench: Bench) -> str | None:
    """The final AdamW state saved next to the trained model (bergson_core.train.trainer checkpoints)."""
    path = os.path.join(os.path.dirname(bench.model.rstrip("/")), "optimizer.safetensors")
    return path if os.path.exists(path) else None


@method("TrackStar", "Adam-normalised (final optimizer state), projected, unit-normalised gradients; corpus + "
        "query covariance, H^-1/2 on both sides; cosine")
def _trackstar(bench: Bench) -> str:
    from bergson_core.config.curvature import TrackstarConfig

    from . import launch

    index, out = _fresh(bench, "trackstar")
    cfg = TrackstarConfig(**_common(bench, index, out), projection_dim=bench.projection_dim,
                          optimizer_state=_optimizer_state(bench))
    return launch("trackstar", cfg)["output"]


@method("EK-FAC influence", "EK-FAC fitted on the corpus (full gradients, exact mode), g_q^T (F + damping)^-1 g_d")
def _ekfac(bench: Bench) -> str:
    from bergson_core.config.curvature import EkfacConfig

    from . import launch

    index, out = _fresh(bench, "ekfac")
    return launch("ekfac", EkfacConfig(**_common(bench, index, out), mode="exact"))["output"]
