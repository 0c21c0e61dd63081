"""Fitting a preconditioner over a gradient index as plain map / reduce / fit steps over the store.

    plan_fit(cfg)                          validate, list the statistic passes and their shards
    stats_shard(cfg, pass, shard, ...)     map: one shard's partial sums -> INDEX/stats/<dir>/shard-i
    reduce_pass(cfg, pass)                 reduce: sum of the partials   -> INDEX/stats/<dir>/total
    fit_and_save(cfg, totals, ...)         float64 fit                   -> INDEX/precond/<name>/
    lambda_pass(cfg, plan, basis)          EK-FAC's second pass, in the eigenbasis of a saved KFAC fit

A pass's folder <dir> is "<kind>-<hash>", the hash of everything that changes its numbers (index
spec, model, gradient space, Fisher type, row source, the EK-FAC basis, code version), so statistics
of different settings never mix and a rerun finds, and skips, every partial it already wrote. The
Prefect tasks in tasks/curvature.py only add retries, caching, tags and artifacts around these.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import curvature as C
from .. import fs as fsu
from ..config import CODE_VERSION, spec_hash
from ..config.curvature import EkfacConfig, FitConfig, FitOptions, apply_options
from ..errors import ConfigError, StoreError
from ..index.append import index_docs, shard_ranges
from ..index.build import check_data_columns, load_for_index, load_for_spec, open_corpus
from ..index.store import Index, grad_matrix
from ..scoring.score import index_build_config
from .io import PRECOND_MANIFEST, precond_dir, stats_dir, stats_name

SOURCES_FILE = "total.sources.json"  # shard manifests' checksums the total was reduced from


def _index(cfg) -> Index:
    return Index(cfg.index, cfg.storage_options)


def fit_space(cfg: FitConfig, meta: dict) -> C.Space:
    """The space statistics are gathered in: the index's projection, or full gradients (--full-space)."""
    return C.Space.of(meta["spec"], 0 if cfg.full_space else None)


def basis_name(cfg: FitConfig) -> str:
    """Where EK-FAC keeps the KFAC fit whose eigenbasis its second pass uses."""
    return f"{cfg.output_name}-kfac-basis"


def _model_key(cfg: FitConfig, meta: dict) -> dict:
    from ..model.loading import resolve_device, resolve_dtype

    bcfg = index_build_config(meta, cfg)
    dtype = resolve_dtype(bcfg.dtype, resolve_device(bcfg.device))
    return {"model": bcfg.model, "revision": bcfg.revision, "gguf_file": bcfg.gguf_file, "dtype": str(dtype)}


def make_pass(cfg: FitConfig, meta: dict, kind: str, source: str, shards: list, **extra) -> dict:
    """A JSON-friendly description of one statistic pass (what a task receives)."""
    settings = {"index_spec_hash": meta["spec_hash"], "model_fingerprint": meta["model_fingerprint"],
                "kind": kind, "source": source, "space": fit_space(cfg, meta).to_json(),
                "code_version": CODE_VERSION, **extra}
    if source == "model":
        settings.update(model=_model_key(cfg, meta), fisher=cfg.fisher)
        if cfg.fisher == "true":
            settings["fisher_seed"] = cfg.fisher_seed
    if kind.startswith("autocorr"):
        settings["unit_normalize"] = cfg.unit_normalize
    return {"kind": kind, "source": source, "dir": f"{kind}-{spec_hash(settings)[:10]}",
            "shards": [list(s) for s in shards], "settings": settings}


def _query_manifest(cfg: FitConfig) -> dict:
    from ..scoring.run import QUERY_MANIFEST, output_url

    scfg = cfg.query_score_config()
    fs, path = fsu.url_to_fs(output_url(scfg), cfg.storage_options)
    mpath = fsu.join(path, QUERY_MANIFEST)
    if not fsu.exists(fs, mpath):
        raise StoreError(f"no query gradients in {output_url(scfg)}: compute them first (the fit flow does)")
    return fsu.read_json(fs, mpath)


def check_model(cfg: FitConfig, meta: dict):
    """Load the model (cached) and corpus of the index; refuse a different layout or corpus."""
    bcfg = index_build_config(meta, cfg)
    loaded, modules, corpus = load_for_index(bcfg, meta, cfg.index, "fit")
    check_data_columns(corpus, bcfg.text_column, bcfg.prompt_column, bcfg.completion_column, bcfg.id_column,
                       bcfg.conversation_column)
    return bcfg, loaded, modules, corpus


def plan_fit(cfg: FitConfig, load: bool = True) -> dict:
    """Validate the options against the index and list the first-stage passes. Raises UserError."""
    index = _index(cfg)
    meta = index.meta()
    source = cfg.source()
    kind = C.get_strategy(cfg.strategy).first_pass  # declared by the strategy (strategy.py)
    shards = shard_ranges(meta)
    passes = []
    if kind is not None:
        owner = C.get_strategy(kind)  # the strategy whose statistics these are (EK-FAC's: kfac)
        passes.append(make_pass(cfg, meta, kind, source if owner.has_rows_stats() else "model", shards))
    if cfg.queries:
        q = _query_manifest(cfg)
        passes.append(make_pass(cfg, meta, "autocorr-query", "query-rows", [(0, 0, q["rows"])],
                                queries=q["key"], query_sha256=q["sha256"]))
    if any(p["source"] == "rows" for p in passes) or (cfg.strategy == "ekfac" and source == "rows"):
        complete = len(index.manifests())
        if complete != meta["num_shards"]:
            raise StoreError(f"index {cfg.index} is incomplete ({complete}/{meta['num_shards']} shards): "
                             "rerun `bergson build` before fitting from its rows")
    if load and (any(p["source"] == "model" for p in passes) or (cfg.strategy == "ekfac" and source == "model")):
        check_model(cfg, meta)
    return {"index": cfg.index, "spec_hash": meta["spec_hash"], "strategy": cfg.strategy, "name": cfg.output_name,
            "source": source, "space": fit_space(cfg, meta).to_json(), "documents": meta["dataset"]["rows"],
            "passes": passes}


def lambda_pass(cfg: FitConfig, plan: dict, basis: str) -> dict:
    """EK-FAC's eigenvalue-correction pass in the eigenbasis of the saved KFAC fit `basis`."""
    meta = _index(cfg).meta()
    fingerprint = _precond_manifest(cfg, basis)["fingerprint"]
    shards = shard_ranges(meta)
    return make_pass(cfg, meta, "ekfac-lambda", plan["source"], shards, basis=fingerprint, basis_name=basis)


# -- map ---------------------------------------------------------------------------------------
def _live_rows(rows: np.ndarray) -> np.ndarray:
    """Rows of documents with loss (empty documents are stored as zero rows), as float64."""
    x = np.asarray(rows, dtype=np.float64)
    return x[np.any(x != 0, axis=1)]


def _basis(index: Index, p: dict):
    basis = C.load_preconditioner(index, p["settings"]["basis_name"])
    if basis.fingerprint() != p["settings"]["basis"]:
        raise StoreError(f"KFAC basis {p['settings']['basis_name']} changed during the fit: rerun `bergson fit`")
    return basis


def _compute(cfg: FitConfig, index: Index, p: dict, start: int, stop: int, shard: int, on_batch) -> C.Stats:
    meta = index.meta()
    kind, source = p["kind"], p["source"]
    if source in ("rows", "query-rows"):
        space, _, blocks = C.index_layout(meta)
        if source == "query-rows":
            from ..scoring.run import load_query_gradients

            rows = _live_rows(load_query_gradients(cfg.query_score_config())[0])
        else:
            rows = _live_rows(grad_matrix(index.open_shard(shard)))
        if kind == "ekfac-lambda":
            return C.rows_lambda_partial_stats(rows, _basis(index, p))
        if kind.startswith("autocorr"):  # the corpus's or the query set's covariance
            return C.get_strategy("autocorr").rows_stats(rows, blocks, space, unit_normalize=cfg.unit_normalize,
                                                         kind=kind)
        if kind not in C.STRATEGIES or not C.get_strategy(kind).has_rows_stats():
            raise ConfigError(f"{kind} statistics cannot come from stored rows")
        return C.get_strategy(kind).rows_stats(rows, blocks, space)
    bcfg, loaded, modules, corpus = check_model(cfg, meta)
    docs = index_docs(meta, bcfg, loaded.tokenizer, start, stop)
    kw = {"fisher": cfg.fisher, "seed": cfg.fisher_seed, "loss_reduction": bcfg.loss_reduction,
          "batch_tokens": cfg.batch_tokens, "on_batch": on_batch}
    if kind == "ekfac-lambda":
        return C.lambda_partial_stats(loaded, modules, docs, _basis(index, p), **kw)
    space = C.Space(**p["settings"]["space"])
    return C.get_strategy(kind).model_stats(loaded, modules, docs, space, **kw)


def stats_shard(cfg: FitConfig, p: dict, shard: int, start: int, stop: int, on_batch=None) -> dict:
    """Partial statistics of one shard for pass `p` (skipped when already written)."""
    index = _index(cfg)
    if C.has_stats(index, p["dir"], shard):
        return {"dir": p["dir"], "shard": shard, "skipped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    stats = _compute(cfg, index, p, start, stop, shard, on_batch)
    manifest = C.save_stats(index, dataclasses.replace(stats, kind=p["dir"]), shard=shard)
    return {"dir": p["dir"], "shard": shard, "skipped": False, "seconds": time.perf_counter() - t0,
            "bytes": manifest["bytes"], "counts": stats.counts}


def has_partial(cfg: FitConfig, p: dict, shard: int) -> bool:
    return C.has_stats(_index(cfg), p["dir"], shard)


# -- reduce ------------------------------------------------------------------------------------
def _shard_checksums(index: Index, p: dict) -> dict[str, str]:
    fs, base = stats_dir(index, p["dir"])
    out = {}
    for shard, _, _ in p["shards"]:
        path = fsu.join(base, stats_name(shard) + ".json")
        if not fsu.exists(fs, path):
            raise StoreError(f"{p['kind']} statistics of shard {shard} are missing: rerun the fit")
        out[str(shard)] = fsu.read_json(fs, path)["sha256"]
    return out


def reduce_pass(cfg: FitConfig, p: dict) -> dict:
    """Sum a pass's partials into its total (skipped when the total was reduced from these very
    partials). Memory: two partials at a time, whatever the number of shards."""
    index = _index(cfg)
    fs, base = stats_dir(index, p["dir"])
    sources = _shard_checksums(index, p)
    sources_path = fsu.join(base, SOURCES_FILE)
    if C.has_stats(index, p["dir"]) and fsu.exists(fs, sources_path) and fsu.read_json(fs, sources_path) == sources:
        total = fsu.read_json(fs, fsu.join(base, stats_name(None) + ".json"))
        return {"dir": p["dir"], "kind": p["kind"], "skipped": True, "fingerprint": total["fingerprint"],
                "counts": total["counts"]}
    total = None
    for shard, _, _ in p["shards"]:
        part = C.load_stats(index, p["dir"], shard)
        total = part if total is None else C.reduce_stats([total, part])
    manifest = C.save_stats(index, total)
    fsu.write_json(fs, sources_path, sources)  # after the total: a crash in between only redoes the sum
    return {"dir": p["dir"], "kind": p["kind"], "skipped": False, "fingerprint": manifest["fingerprint"],
            "counts": total.counts}


# -- fit ---------------------------------------------------------------------------------------
def _precond_manifest(cfg, name: str) -> dict:
    fs, base = precond_dir(_index(cfg), name)
    path = fsu.join(base, PRECOND_MANIFEST)
    if not fsu.exists(fs, path):
        raise StoreError(f"no preconditioner {name!r} in {cfg.index}: fit it first (`bergson fit`)")
    return fsu.read_json(fs, path)


def fit_and_save(cfg: FitConfig, strategy: str, totals: dict[str, dict], name: str, base: str | None = None) -> dict:
    """Fit `strategy` from reduced totals ({library kind: reduce_pass result}) and save it as
    INDEX/precond/<name>, with the apply options of `cfg` recorded for `bergson score`. Skipped
    when a preconditioner of that name was fitted from the same inputs."""
    index = _index(cfg)
    meta = index.meta()
    inputs = {"strategy": strategy, "stats": {k: t["fingerprint"] for k, t in sorted(totals.items())},
              "space": fit_space(cfg, meta).to_json(), "index_spec_hash": meta["spec_hash"]}
    if C.get_strategy(strategy).uses_fit_options:
        inputs["fit"] = {k: getattr(cfg, k) for k in FitOptions.model_fields}
    if base:
        inputs["base"] = _precond_manifest(cfg, base)["fingerprint"]
    apply = apply_options(cfg).model_dump()
    if C.has_preconditioner(index, name):
        old = _precond_manifest(cfg, name)
        if old["meta"].get("inputs") == inputs and old["meta"].get("apply") == apply:
            return {"name": name, "strategy": strategy, "skipped": True, "fingerprint": old["fingerprint"],
                    "meta": old["meta"]}
    t0 = time.perf_counter()
    stats = {k: C.load_stats(index, t["dir"]) for k, t in totals.items()}
    layout = None
    if C.get_strategy(strategy).needs_layout:
        space, _, blocks = C.index_layout(meta, 0 if cfg.full_space else None)
        layout = (space, blocks)
    fit = C.fit_preconditioner(strategy, stats, FitOptions(**{k: getattr(cfg, k) for k in FitOptions.model_fields}),
                               base=C.load_preconditioner(index, base) if base else None, layout=layout)
    fit.meta.update(inputs=inputs, apply=apply)
    manifest = C.save_preconditioner(index, name, fit)
    return {"name": name, "strategy": strategy, "skipped": False, "fingerprint": manifest["fingerprint"],
            "meta": fit.meta, "seconds": time.perf_counter() - t0}


# -- recipes -----------------------------------------------------------------------------------
def ekfac_mode(cfg: EkfacConfig) -> str:
    """exact or projected; auto picks exact while the corpus's full float32 gradients stay small."""
    if cfg.mode == "exact" and cfg.projection_dim:
        raise ConfigError("exact mode keeps full gradients: drop --projection-dim or use --mode projected")
    if cfg.mode != "auto":
        return cfg.mode
    if cfg.projection_dim is not None:
        return "exact" if cfg.projection_dim == 0 else "projected"
    _, modules, corpus = load_for_spec(cfg.build_config("exact"))
    width = sum(m.width for m in modules)  # full per-module gradients
    return "exact" if len(corpus) * width * 4 <= cfg.exact_max_bytes else "projected"


def check_queries(cfg) -> None:
    """Refuse a query set without the columns the options name (before any work starts)."""
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    check_data_columns(queries, *cfg.query_columns())


def pick_corpus_gradients(cfg: EkfacConfig, bcfg) -> dict:
    """Exact mode: where the corpus gradients scored against the queries come from, and why.

    Both ways cost one gradient pass over the corpus when nothing is stored yet; storing adds
    writing and reading back every full float32 gradient (documents x width x 4 bytes), so it only
    pays off when the index is already complete (reading costs no model pass). Scores are the same
    either way (recompute_topk rounds rows to the stored dtype)."""
    _, modules, corpus = load_for_spec(bcfg)
    width = sum(m.width for m in modules)
    nbytes = len(corpus) * width * 4
    size = f"{len(corpus):,} documents x {width:,} numbers x 4 bytes = {nbytes / 2**30:.2f} GiB"
    index = Index(bcfg.index, bcfg.storage_options)
    complete = False
    if index.exists():
        meta = index.meta()
        complete = meta.get("spec_hash") == bcfg.spec_hash() and len(index.manifests()) == meta["num_shards"]
    if cfg.corpus_gradients != "auto":
        picked, why = cfg.corpus_gradients, "asked for (--corpus-gradients)"
    elif complete:
        picked, why = "stored", "the full-gradient index is already complete: streaming it costs no model pass"
    else:
        picked, why = "recompute", ("storing would cost the same gradient pass plus writing and reading back "
                                    f"{size}; recomputing while scoring costs only the gradient pass")
    return {"picked": picked, "reason": why, "bytes": nbytes, "width": width, "documents": len(corpus),
            "index_complete": complete}


def fit_in_process(cfg: FitConfig) -> dict:
    """`bergson fit` as plain function calls in this process (no Prefect, no queries): plan, map,
    reduce and fit, then EK-FAC's eigenvalue pass. For tests and benchmarks."""
    plan = plan_fit(cfg)
    totals = {}
    for p in plan["passes"]:
        for shard, start, stop in p["shards"]:
            stats_shard(cfg, p, shard, start, stop)
        totals[p["kind"]] = reduce_pass(cfg, p)
    if cfg.strategy != "ekfac":
        return fit_and_save(cfg, cfg.strategy, totals, plan["name"])
    basis = basis_name(cfg)
    fit_and_save(cfg, "kfac", {"kfac": totals.pop("kfac")}, basis)
    p = lambda_pass(cfg, plan, basis)
    for shard, start, stop in p["shards"]:
        stats_shard(cfg, p, shard, start, stop)
    return fit_and_save(cfg, "ekfac", {"ekfac-lambda": reduce_pass(cfg, p)}, plan["name"], basis)


def ekfac_exact_in_process(cfg: EkfacConfig) -> dict:
    """`bergson ekfac --mode exact` as plain function calls in this process (no Prefect): the same
    steps and choice of corpus gradients as flows/ekfac.py. For tests and benchmarks."""
    from ..index.build import build_shard, prepare_build
    from ..scoring.run import ensure_query_gradients, recompute_topk, run_topk

    bcfg = cfg.build_config("exact")
    source = pick_corpus_gradients(cfg, bcfg)
    plan = prepare_build(bcfg)
    if source["picked"] == "stored":
        for shard, start, stop in plan.missing():
            build_shard(bcfg, shard, start, stop)
    fit_in_process(cfg.fit_config("exact"))
    scfg = cfg.score_config()
    ensure_query_gradients(scfg, need_shards=source["picked"] == "stored")
    result = run_topk(scfg) if source["picked"] == "stored" else recompute_topk(scfg)
    return {**result, "mode": "exact", "corpus_gradients": source}
