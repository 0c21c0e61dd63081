"""Rows of `bergson benchmark` for the estimators of bergson_core/config/estimators.py (TRAK), listed in
the benchmark's explicit registry (benchmark.methods()). Not a command (no row in COMMANDS)."""

from __future__ import annotations

import os
import shutil

from .bench_dynamics import TRACIN_CHECKPOINTS, _checkpointed_run
from .benchmark import Bench, method


def _trak(bench: Bench, slug: str, models: list[str]) -> str:
    """Build one index per model (projection seed k for model k, TRAK's independent projections), then TRAK."""
    from bergson_core.config import BuildConfig
    from bergson_core.config.estimators import TrakConfig

    from . import launch

    root = os.path.join(bench.workdir, slug)
    indexes = []
    for k, model in enumerate(models):
        index = os.path.join(root, "indexes", f"model-{k}")
        launch("build", BuildConfig(index=index, model=model, dataset=bench.corpus, id_column="id",
                                    projection_dim=bench.projection_dim, projection_seed=k, loss_reduction="mean",
                                    grad_dtype="float32", progress=False))
        indexes.append(index)
    cfg = TrakConfig(indexes=indexes, queries=bench.queries, query_prompt_column="prompt",
                     query_completion_column="completion", output=os.path.join(root, "scores"), progress=False)
    return launch("trak", cfg)["output"]


@method("TRAK (final model)", "projected gradients (p x p per module), 1 - p reweighting, "
        "(Phi^T Phi + lambda I)^-1, lambda = 0.1 x mean eigenvalue (Park et al. 2023)")
def _trak_final(bench: Bench) -> str:
    shutil.rmtree(os.path.join(bench.workdir, "trak-final"), ignore_errors=True)  # time the whole method
    return _trak(bench, "trak-final", [bench.model])


@method(f"TRAK ({TRACIN_CHECKPOINTS} checkpoints)", f"TRAK averaged over {TRACIN_CHECKPOINTS} checkpoints of the run "
        "(its last is the final model), an independent projection each; wall time includes retraining with checkpoints")
def _trak_checkpoints(bench: Bench) -> str:
    root = os.path.join(bench.workdir, "trak-checkpoints")
    shutil.rmtree(root, ignore_errors=True)
    checkpoints = _checkpointed_run(bench, os.path.join(root, "run"), TRACIN_CHECKPOINTS)
    return _trak(bench, "trak-checkpoints", [os.path.join(c, "model") for c in checkpoints])


def _second_order(bench: Bench, slug: str, command: str, options: dict) -> str:
    """A full-gradient index (p = 0) of the trained model, then `bergson lissa` or `bergson arnoldi` on it."""
    from bergson_core.config import BuildConfig
    from bergson_core.config.estimators import ArnoldiConfig, LissaConfig

    from . import launch

    root = os.path.join(bench.workdir, slug)
    shutil.rmtree(root, ignore_errors=True)  # time the whole method
    index = os.path.join(root, "index")
    launch("build", BuildConfig(index=index, model=bench.model, dataset=bench.corpus, id_column="id",
                                projection_dim=0, loss_reduction="mean", grad_dtype="float32", progress=False))
    config = LissaConfig if command == "lissa" else ArnoldiConfig
    cfg = config(index=index, queries=bench.queries, query_prompt_column="prompt", query_completion_column="completion",
                 output=os.path.join(root, "scores"), progress=False, **options)
    return launch(command, cfg)["output"]


@method("LiSSA (GGN, depth 50)", "(G + lambda I)^-1 g_q by the LiSSA recursion (Agarwal et al. 2017), Gauss-Newton "
        "products through the model on 8 random documents per step (each query vector costs its own backward: "
        "queries x depth x batch document passes), lambda = 0.01 x largest eigenvalue, s = 1.5 x (largest "
        "eigenvalue of the corpus or 4 random batches + lambda); truncated (lambda / s ~ 7e-3: far from converged "
        "after 50 steps, so a Neumann-series regulariser more than an inverse; lissa.json reports the updates); full gradients")
def _lissa(bench: Bench) -> str:
    return _second_order(bench, "lissa", "lissa", {"depth": 50, "lissa_batch": 8})


@method("Arnoldi (GGN, 50 iterations, rank 20)", "top-20 Gauss-Newton eigenpairs by 50 Arnoldi iterations, "
        "g_q^T U (Lambda + lambda)^-1 U^T g_d, lambda = 0.01 x largest (Schioppa et al. 2022); full gradients")
def _arnoldi(bench: Bench) -> str:
    return _second_order(bench, "arnoldi", "arnoldi", {"iterations": 50, "rank": 20})
