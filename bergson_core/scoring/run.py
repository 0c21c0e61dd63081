"""The two steps of a score run, as plain functions over the store:

1. query gradients with the index's spec, written once to OUTPUT/query_grads.arrow (+ .json, last);
2. streaming top-k over the index's shards, written to OUTPUT/topk.parquet.

A rerun with the same index, queries and model settings reuses step 1's file (scoring/queries.py).
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import fs as fsu
from ..config import ScoreConfig
from ..errors import StoreError
from ..guards import check_index_ready, corpus_for_texts, store_doc_ids
from ..index.store import Index, grad_matrix, read_grads
from .queries import cached_query_gradients
from .results import TOPK_FILE, topk_table, write_table
from .score import score_index

QUERY_GRADS = "query_grads.arrow"
QUERY_MANIFEST = "query_grads.json"


def output_url(cfg: ScoreConfig) -> str:
    if cfg.output:
        return cfg.output.rstrip("/")
    stem = os.path.splitext(os.path.basename(cfg.queries.rstrip("/")))[0] or "queries"
    return fsu.join(cfg.index, "scores", stem)


def ensure_query_gradients(cfg: ScoreConfig) -> dict:
    """Compute (or reuse) the query gradients in OUTPUT/query_grads.arrow; returns their manifest.
    An incomplete or corrupt index, an --output that is a file, or a query model other than the
    index's (checked in the cache) is refused first."""
    index = Index(cfg.index, cfg.storage_options)
    meta = check_index_ready(index, checksum=index.local)
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


def preconditioner_transforms(cfg: ScoreConfig, meta: dict | None = None):
    """(query transform, document transform or None, description) of --preconditioner NAME, applied
    with the options it was fitted with; (None, None, None) without one. A preconditioner fitted in
    another gradient space (projection, bias) or on other modules is refused (StoreError)."""
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

    def precondition(rows: np.ndarray) -> np.ndarray:  # [N, D] -> [N, D] float32
        return C.apply(fit, np.asarray(rows, dtype=np.float32), opts)

    both = applies_to_both_sides(opts)
    info = {"name": cfg.preconditioner, "strategy": fit.strategy, "both_sides": both, **opts.model_dump()}
    return precondition, (precondition if both else None), info


def run_topk(cfg: ScoreConfig, on_shard=None, transform=None, doc_transform=None) -> dict:
    """Score all shards, write OUTPUT/topk.parquet, return a summary with the table rows.
    With cfg.preconditioner (and no explicit transforms) the fitted preconditioner is applied."""
    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    precond = None
    if transform is None and doc_transform is None:
        transform, doc_transform, precond = preconditioner_transforms(cfg, meta)
    q, qman = load_query_gradients(cfg)
    t0 = time.perf_counter()
    scores, docs = score_index(
        index, q, cfg.metric, cfg.aggregate, cfg.top_k, cfg.block_rows, on_shard=on_shard, transform=transform,
        doc_transform=doc_transform,
    )
    seconds = time.perf_counter() - t0
    spec = meta["spec"]
    corpus, corpus_warning = corpus_for_texts(meta, cfg.storage_options)  # reordered corpus: no wrong texts
    ids = store_doc_ids(index, [int(d) for d in docs[np.isfinite(scores)]])
    table = topk_table(scores, docs, corpus, spec, aggregated=cfg.aggregate != "individual", doc_ids=ids)
    warnings = [w for w in (qman.get("model_warning"), corpus_warning) if w]
    if warnings:  # the file says so too, not only the terminal
        table = table.replace_schema_metadata({"bergson.warnings": "\n".join(warnings)})
    out = output_url(cfg)
    write_table(table, fsu.join(out, TOPK_FILE), cfg.storage_options)
    return {
        "output": fsu.join(out, TOPK_FILE),
        "queries": qman["rows"],
        "query_texts": qman["texts"],
        "documents": meta["dataset"]["rows"],
        "seconds": seconds,
        "preconditioner": precond,
        "warnings": warnings,
        "rows": table.to_pylist(),
    }
