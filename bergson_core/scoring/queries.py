"""Query gradients with an index's own spec, cached in the store: the one cache shared by `score`,
`fit --queries`, `tracin` and `source`.

BASE.arrow holds the rows (the gradient-file layout of index/store.py, float32) and BASE.json,
written last, the manifest {key, rows, sha256, texts}. The files are reused while the key is the
same: the index's spec hash and model fingerprint, the query file and its fingerprint, split and
columns, and the model actually loaded (path, revision, GGUF file and the resolved dtype), so
`score --dtype float64` never reuses gradients computed in float32.
"""

from __future__ import annotations

import hashlib
import time

from .. import fs as fsu
from ..config import ScoreConfig
from ..guards import check_query_model
from ..index.build import open_corpus
from ..index.store import encode_grads
from .score import index_build_config, query_gradients, query_model_fingerprint


def query_cache_key(meta: dict, cfg: ScoreConfig) -> dict:
    """Everything that decides the query gradients of `cfg` against the index described by `meta`."""
    from ..model.loading import resolve_device, resolve_dtype

    bcfg = index_build_config(meta, cfg)
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    return {
        "index_spec_hash": meta["spec_hash"],
        "model_fingerprint": meta["model_fingerprint"],
        "queries": cfg.queries,
        "queries_fingerprint": queries.fingerprint,
        "query_split": cfg.query_split,
        "columns": [cfg.query_text_column, cfg.query_prompt_column, cfg.query_completion_column],
        "model": bcfg.model,
        "revision": bcfg.revision,
        "gguf_file": bcfg.gguf_file,
        "dtype": str(resolve_dtype(bcfg.dtype, resolve_device(bcfg.device))),
    }


def cached_query_gradients(meta: dict, cfg: ScoreConfig, base: str) -> dict:
    """Compute (or reuse) the query gradients at BASE.arrow; returns the manifest with `path`
    (BASE.arrow), `reused` and, when computed now, `seconds`."""
    fs, path = fsu.url_to_fs(base + ".json", cfg.storage_options)
    arrow = base + ".arrow"
    key = query_cache_key(meta, cfg)
    # the model actually loaded, by its weights: changed in place, it is refused (or, allowed, said so)
    key["query_model_fingerprint"] = query_model_fingerprint(meta, cfg)
    warning = check_query_model(meta, key["query_model_fingerprint"], getattr(cfg, "allow_model_mismatch", False),
                                cfg.index)
    if fsu.exists(fs, path):
        old = fsu.read_json(fs, path)
        if old.get("key") == key:
            return {**old, "model_warning": warning, "path": arrow, "reused": True}
    t0 = time.perf_counter()
    qg = query_gradients(meta, cfg)
    n = qg.grads.shape[0]
    data, _ = encode_grads(0, [str(i) for i in range(n)], [0] * n, qg.grads, "float32", what="query gradients")
    afs, apath = fsu.url_to_fs(arrow, cfg.storage_options)
    fsu.write_bytes(afs, apath, data)
    manifest = {"key": key, "rows": n, "sha256": hashlib.sha256(data).hexdigest(), "texts": qg.texts,
                "model_warning": warning}
    fsu.write_json(fs, path, manifest)  # last: marks the gradients complete
    return {**manifest, "path": arrow, "reused": False, "seconds": time.perf_counter() - t0}
