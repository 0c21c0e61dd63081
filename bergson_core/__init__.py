"""bergson_core: training-data attribution for causal language models, as a plain library (no
Prefect). The `bergson` CLI and the Prefect flows in flows/ call the same functions task by task;
these four run a whole step in the calling process:

    import bergson_core as bc

    bc.build(index="runs/idx", model="path/to/model", dataset="corpus.jsonl", projection_dim=16)
    bc.fit(index="runs/idx", strategy="ekfac")                        # optional: a preconditioner
    top = bc.score(index="runs/idx", queries="q.jsonl", top_k=10, preconditioner="ekfac")
    index = bc.open_index("runs/idx")                                  # meta(), manifests(), iter_shards()

Each takes a config object (bergson_core.config: BuildConfig, ScoreConfig, FitConfig) or its
fields as keywords, exactly the options of the CLI command of the same name. Importing this
package does not import torch. The layout of the package: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["__version__", "build", "fit", "open_index", "score"]


def _config(cls, config, options: dict):
    if config is not None and options:
        raise TypeError("pass a config object or keyword options, not both")
    return config if config is not None else cls(**options)


def build(config=None, **options: Any) -> dict:
    """Compute and store the per-document gradients of a corpus (`bergson build`).

    Validates model, corpus and options, writes INDEX/index.json, then every missing shard (a
    rerun only computes what is missing). Returns {"index", "shards", "computed", "skipped",
    "documents", "tokens", "bytes"}. Raises bergson_core.errors.UserError for fixable mistakes."""
    from .config import BuildConfig
    from .index.build import build_shard, prepare_build

    cfg = _config(BuildConfig, config, options)
    plan = prepare_build(cfg)
    results = [build_shard(cfg, shard, start, stop) for shard, start, stop in plan.shards]
    computed = [r for r in results if not r["skipped"]]
    return {"index": cfg.index, "shards": len(results), "computed": len(computed),
            "skipped": len(results) - len(computed), "documents": plan.meta["dataset"]["rows"],
            "tokens": sum(r.get("tokens", 0) for r in computed), "bytes": sum(r["bytes"] for r in results)}


def score(config=None, **options: Any) -> dict:
    """Score queries against a built index and keep the top-k documents per query (`bergson score`).

    Writes OUTPUT/query_grads.arrow (reused by reruns) and OUTPUT/topk.parquet; returns a summary
    whose "rows" are the top-k table (query_index, rank, doc_index, score, doc_id, text)."""
    from .config import ScoreConfig
    from .scoring.run import ensure_query_gradients, run_topk

    cfg = _config(ScoreConfig, config, options)
    ensure_query_gradients(cfg)
    return run_topk(cfg)


def fit(config=None, **options: Any) -> dict:
    """Fit a preconditioner over an index (`bergson fit`): per-shard statistics, reduced, fitted in
    float64 and saved as INDEX/precond/NAME for score(preconditioner=NAME). Partials, totals and
    fits already stored are reused. Returns the fit's summary (name, strategy, fingerprint, meta)."""
    from .config.curvature import FitConfig
    from .curvature import get_strategy
    from .curvature.run import basis_name, fit_and_save, lambda_pass, plan_fit, reduce_pass, stats_shard
    from .scoring.run import ensure_query_gradients

    cfg = _config(FitConfig, config, options)
    cfg.source()  # impossible option pairs fail before any work
    if cfg.queries:
        ensure_query_gradients(cfg.query_score_config())
    plan = plan_fit(cfg)

    def map_reduce(p: dict) -> dict:
        for shard, start, stop in p["shards"]:
            stats_shard(cfg, p, shard, start, stop)
        return reduce_pass(cfg, p)

    totals = {p["kind"]: map_reduce(p) for p in plan["passes"]}
    strategy = get_strategy(cfg.strategy)
    if strategy.needs_base:  # EK-FAC: fit the KFAC basis, then the eigenvalue pass in it
        basis = basis_name(cfg)
        fit_and_save(cfg, strategy.needs_base, {strategy.first_pass: totals.pop(strategy.first_pass)}, basis)
        second = lambda_pass(cfg, plan, basis)
        return fit_and_save(cfg, cfg.strategy, {second["kind"]: map_reduce(second)}, plan["name"], basis)
    return fit_and_save(cfg, cfg.strategy, totals, plan["name"])


def open_index(url: str, storage_options: dict | None = None):
    """The gradient index at a local path or fsspec URL (bergson_core.index.store.Index): meta(),
    manifests(), open_shard(i), iter_shards(); nothing is read until asked."""
    from .index.store import Index

    return Index(url, storage_options)
