"""The two steps of a score run, as plain functions over the store:

1. query gradients with the index's spec, written once to OUTPUT/query_grads.arrow (+ .json, last);
2. streaming top-k over the index's shards, written to OUTPUT/topk.parquet.

A rerun with the same index, queries and model settings reuses step 1's file (scoring/queries.py).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .. import fs as fsu
from ..config import ScoreConfig
from ..errors import StoreError
from ..guards import check_index_ready, checked_topk_table
from ..index.store import Index, grad_matrix, read_grads
from .queries import cached_query_gradients
from .results import TOPK_FILE, shown_rows, write_table
from .score import index_build_config, score_index

QUERY_GRADS = "query_grads.arrow"
QUERY_MANIFEST = "query_grads.json"


def output_url(cfg: ScoreConfig) -> str:
    if cfg.output:
        return cfg.output.rstrip("/")
    stem = os.path.splitext(os.path.basename(cfg.queries.rstrip("/")))[0] or "queries"
    return fsu.join(cfg.index, "scores", stem)


def ensure_query_gradients(cfg: ScoreConfig, need_shards: bool = True) -> dict:
    """Compute (or reuse) the query gradients in OUTPUT/query_grads.arrow; returns their manifest.
    An incomplete or corrupt index (unless need_shards=False: a spec-only index whose corpus
    gradients are recomputed while scoring), an --output that is a file, or a query model other
    than the index's (checked in the cache) is refused first."""
    index = Index(cfg.index, cfg.storage_options)
    meta = check_index_ready(index, checksum=index.local) if need_shards else index.meta()
    out = output_url(cfg)
    fs, path = fsu.url_to_fs(out, cfg.storage_options)
    if fsu.is_local(fs) and os.path.isfile(path):
        raise StoreError(f"--output {out} is an existing file, not a folder: pass a folder path")
    return cached_query_gradients(meta, cfg, fsu.join(out, QUERY_GRADS.removesuffix(".arrow")))


def load_query_gradients(cfg: ScoreConfig) -> tuple[np.ndarray, dict]:
    out = output_url(cfg)
    fs, path = fsu.url_to_fs(out, cfg.storage_options)
    manifest_path = fsu.join(path, QUERY_MANIFEST)
    if not fsu.exists(fs, manifest_path):
        raise StoreError(f"no query gradients in {out}: run the query-gradient step first")
    manifest = fsu.read_json(fs, manifest_path)
    table = read_grads(fsu.join(out, QUERY_GRADS), cfg.storage_options)
    return np.array(grad_matrix(table), dtype=np.float32), manifest


def preconditioner_transforms(cfg: ScoreConfig, meta: dict | None = None, dtype: torch.dtype = torch.float64):
    """(query transform, document transform or None, description) of --preconditioner NAME, applied
    with the options it was fitted with; (None, None, None) without one. A preconditioner fitted in
    another gradient space (projection, bias) or on other modules is refused (StoreError). The
    transforms return rows in `dtype` (the precision of the rotations; see curvature.apply)."""
    if not cfg.preconditioner:
        return None, None, None
    from .. import curvature as C
    from ..config.curvature import ApplyOptions, applies_to_both_sides

    index = Index(cfg.index, cfg.storage_options)
    meta = meta or index.meta()
    space, _, blocks = C.index_layout(meta)
    fit = C.load_preconditioner(index, cfg.preconditioner, space=space)
    if [b.to_json() for b in fit.blocks] != [b.to_json() for b in blocks]:
        raise StoreError(f"preconditioner {cfg.preconditioner!r} was fitted on other modules than index "
                         f"{cfg.index} tracks: refit it for this index (`bergson fit`)")
    opts = ApplyOptions(**fit.meta.get("apply", {}))

    np_dtype = np.float64 if dtype == torch.float64 else np.float32

    def precondition(rows: np.ndarray) -> np.ndarray:  # [N, D] -> [N, D] in dtype
        return C.apply(fit, np.asarray(rows, dtype=np_dtype), opts, dtype=dtype)

    both = applies_to_both_sides(opts)
    info = {"name": cfg.preconditioner, "strategy": fit.strategy, "both_sides": both, **opts.model_dump()}
    return precondition, (precondition if both else None), info


def score_dtype(meta: dict, cfg: ScoreConfig) -> torch.dtype:
    """Products are taken in float64 for float64 models (tests, exact comparisons), else float32."""
    from ..model.loading import resolve_device, resolve_dtype

    bcfg = index_build_config(meta, cfg)
    return torch.float64 if resolve_dtype(bcfg.dtype, resolve_device(bcfg.device)) == torch.float64 else torch.float32


def _finish(cfg: ScoreConfig, meta: dict, qman: dict, scores, docs, seconds: float, precond, **extra) -> dict:
    """Write OUTPUT/topk.parquet; return a small summary with the first cfg.show ranks per query."""
    warnings = [w for w in (qman.get("model_warning"),) if w]
    table = checked_topk_table(Index(cfg.index, cfg.storage_options), meta, scores, docs,
                               cfg.aggregate != "individual", warnings)
    out = output_url(cfg)
    write_table(table, fsu.join(out, TOPK_FILE), cfg.storage_options)
    return {
        "output": fsu.join(out, TOPK_FILE),
        "queries": qman["rows"],
        "query_texts": qman["texts"],
        "documents": meta["dataset"]["rows"],
        "top_k": cfg.top_k,
        "table_rows": table.num_rows,
        "show": cfg.show,
        "seconds": seconds,
        "preconditioner": precond,
        "warnings": warnings,
        **extra,
        "rows": shown_rows(table, cfg.show),
    }


def run_topk(cfg: ScoreConfig, on_shard=None, transform=None, doc_transform=None) -> dict:
    """Score all shards, write OUTPUT/topk.parquet, return a summary with the first `show` ranks of
    each query (the whole table is in the file). With cfg.preconditioner (and no explicit
    transforms) the fitted preconditioner is applied."""
    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    precond = None
    dtype = score_dtype(meta, cfg)
    if transform is None and doc_transform is None:
        transform, doc_transform, precond = preconditioner_transforms(cfg, meta, dtype)
    q, qman = load_query_gradients(cfg)
    t0 = time.perf_counter()
    scores, docs = score_index(
        index, q, cfg.metric, cfg.aggregate, cfg.top_k, cfg.block_rows, on_shard=on_shard, transform=transform,
        doc_transform=doc_transform, dtype=dtype,
    )
    return _finish(cfg, meta, qman, scores, docs, time.perf_counter() - t0, precond, corpus_gradients="stored")


def recompute_topk(cfg: ScoreConfig, on_rows=None) -> dict:
    """run_topk without stored corpus rows: the corpus gradients are recomputed with the index's
    spec, a bounded block of documents at a time (rows_per_block), rounded to the index's gradient
    dtype exactly as the store would hold them, scored and dropped. Memory does not grow with the
    corpus, and the scores are those run_topk gives on the built index. Needs only index.json."""
    from ..gradients.extract import compute_gradients
    from ..index.append import index_docs, shard_ranges
    from ..index.build import load_for_index, open_normalizers
    from .score import BlockDecoder, TopK, prepare_queries, rows_per_block, score_block

    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    dtype = score_dtype(meta, cfg)
    transform, doc_transform, precond = preconditioner_transforms(cfg, meta, dtype)
    q, qman = load_query_gradients(cfg)
    t0 = time.perf_counter()
    bcfg = index_build_config(meta, cfg)
    loaded, modules, corpus = load_for_index(bcfg, meta, cfg.index, "score")
    normalizers = open_normalizers(bcfg, loaded, modules)
    qt = prepare_queries(q if transform is None else transform(q), cfg.metric, cfg.aggregate, dtype)
    top = TopK(1 if cfg.aggregate in ("mean", "max") else qt.shape[0], cfg.top_k, dtype)
    decode = BlockDecoder(dtype)
    stored = np.float16 if meta["grad_dtype"] == "float16" else np.float32
    per_block = rows_per_block(meta["row_width"], cfg.block_rows)
    for _, start, stop in shard_ranges(meta):
        for lo in range(start, stop, per_block):
            hi = min(stop, lo + per_block)
            docs = index_docs(meta, bcfg, loaded.tokenizer, lo, hi)
            grads, _ = compute_gradients(loaded, modules, docs, bcfg, cfg.batch_tokens, normalizers=normalizers)
            rows = grads.astype(stored, copy=False)  # the numbers the store would hold
            del grads
            if doc_transform is not None:
                rows = doc_transform(rows)
            top.add(score_block(qt, rows, cfg.metric, cfg.aggregate, decode), lo)
            del rows
            if on_rows:
                on_rows(hi - lo)
    return _finish(cfg, meta, qman, top.scores.numpy(), top.docs.numpy(), time.perf_counter() - t0, precond,
                   corpus_gradients="recompute")
