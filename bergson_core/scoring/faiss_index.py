"""Approximate search over an index's gradients with FAISS (Johnson et al. 2019, "Billion-scale
similarity search with GPUs"), built once and kept inside the index folder:

    INDEX/faiss/<factory>-<key hash>/trained.faiss      the empty index after training (IVF, PQ)
    INDEX/faiss/<factory>-<key hash>/parts/part-*.faiss  the rows of one block of shards each
    INDEX/faiss/<factory>-<key hash>/index.faiss         the merged index (doc index = FAISS id)
    INDEX/faiss/<factory>-<key hash>/index.json          its manifest, WRITTEN LAST: key, rows, sha256

The key is what decides the vectors: the factory string, the metric, the index's spec hash, its
shards' checksums and (only when it is applied to both sides) the preconditioner. The folder name
hashes all of it but the checksums, so a changed factory or spec gets a new folder and a rebuilt
shard rebuilds the same one. Vectors are searched by inner product: cosine through unit-normalised
rows and queries; a preconditioner is applied to the queries before the search (and, when it
applies to both sides, to the rows before they are added).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading

import numpy as np

from .. import fs as fsu
from ..errors import ConfigError, StoreError
from ..index.store import Index, cache_root
from .score import shard_blocks

FAISS_DIR = "faiss"
TRAINED, MERGED, MANIFEST = "trained.faiss", "index.faiss", "index.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("--faiss needs the faiss package: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def faiss_key(meta: dict, manifests: list[dict], factory: str, metric: str, precond: dict | None) -> dict:
    """Everything that decides the FAISS index's contents (precond: name and fit fingerprint, or None)."""
    return {"factory": factory, "metric": metric, "spec_hash": meta["spec_hash"], "row_width": meta["row_width"],
            "preconditioner": precond, "shards": [m["sha256"] for m in manifests]}


def faiss_source(cfg) -> tuple[Index, dict, object]:
    """(index, key, doc_transform or None) of `bergson query --faiss` config cfg: the vectors it searches."""
    import torch

    from ..curvature.io import PRECOND_MANIFEST, precond_dir
    from .run import preconditioner_transforms

    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    _, doc_transform, _ = preconditioner_transforms(cfg.score_config(), meta, torch.float32)
    precond = None
    if doc_transform is not None:  # applied to the stored rows too: its factors decide them
        fs, base = precond_dir(index, cfg.preconditioner, cfg.storage_options)
        precond = {"name": cfg.preconditioner, "sha256": fsu.read_json(fs, fsu.join(base, PRECOND_MANIFEST))["sha256"]}
    return index, faiss_key(meta, index.manifests(), cfg.faiss, cfg.metric, precond), doc_transform


def plan(cfg) -> dict:
    """What a build of cfg.faiss does: the folder, the key, blocks of consecutive shards, and
    whether an index with this key is already there (then nothing is built)."""
    from ..guards import check_index_ready

    index, key, _ = faiss_source(cfg)
    check_index_ready(index, checksum=False)  # a FAISS index of a partial corpus would silently miss documents
    empty_index(cfg.faiss, key["row_width"])  # a bad factory string fails before any work
    shards = [m["shard"] for m in index.manifests()]
    step = cfg.faiss_shards_per_task
    url = folder(index.url, key)
    return {"url": url, "key": key, "blocks": [shards[i : i + step] for i in range(0, len(shards), step)],
            "built": is_built(url, key, cfg.storage_options)}


def faiss_name(key: dict) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", key["factory"].lower()).strip("-") or "index"
    named = {k: v for k, v in key.items() if k != "shards"}
    return f"{slug}-{hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:12]}"


def folder(index_url: str, key: dict) -> str:
    return fsu.join(index_url, FAISS_DIR, faiss_name(key))


def is_built(url: str, key: dict, storage_options: dict) -> bool:
    fs, path = fsu.url_to_fs(fsu.join(url, MANIFEST), storage_options)
    return fsu.exists(fs, path) and fsu.read_json(fs, path).get("key") == key


def empty_index(factory: str, width: int):
    faiss = _faiss()
    try:
        index = faiss.index_factory(width, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"--faiss {factory!r} is not a FAISS index-factory string this FAISS builds for "
                          f"{width}-wide rows: {str(e).strip().splitlines()[-1][:200]}") from None
    for part in (index, faiss.try_extract_index_ivf(index)):
        part = faiss.downcast_index(part) if part is not None else None
        if hasattr(part, "do_polysemous_training"):
            # the factory turns on polysemous training of PQ codes: 40x the training time (measured,
            # IVF256,PQ16 on 16k rows: 140 s vs 3.8 s) for a Hamming filter searches never use
            part.do_polysemous_training = False
    return index


def prepared_rows(rows: np.ndarray, metric: str, doc_transform=None) -> np.ndarray:
    """Corpus rows as FAISS stores them: float32, both-sided preconditioner applied, unit rows for cosine."""
    x = np.asarray(rows, dtype=np.float32) if doc_transform is None else doc_transform(rows)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    return np.ascontiguousarray(x, dtype=np.float32)


def _write_index(url: str, index, storage_options: dict) -> str:
    data = _faiss().serialize_index(index).tobytes()
    fs, path = fsu.url_to_fs(url, storage_options)
    fsu.write_bytes(fs, path, data)
    return hashlib.sha256(data).hexdigest()


def _read_index(url: str, storage_options: dict, sha256: str | None = None):
    """A stored FAISS index. A remote one with a known checksum (the merged index) goes through the
    local cache, like shards; build intermediates are read straight into memory."""
    faiss = _faiss()
    fs, path = fsu.url_to_fs(url, storage_options)
    if fsu.is_local(fs):
        return faiss.read_index(path)
    if sha256 is None:
        with fs.open(path, "rb") as f:
            return faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    local = os.path.join(cache_root(), "faiss", sha256 + ".faiss")
    if not os.path.exists(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}.tmp-{os.getpid()}-{threading.get_ident()}"
        fs.get_file(path, tmp)
        os.replace(tmp, local)
    return faiss.read_index(local)


def train(index: Index, url: str, factory: str, metric: str, train_rows: int, doc_transform=None) -> dict:
    """Train the empty index on rows sampled evenly over all shards; write URL/trained.faiss."""
    meta = index.meta()
    empty = empty_index(factory, meta["row_width"])
    sampled = 0
    if not empty.is_trained:
        total = meta["dataset"]["rows"] if "dataset" in meta else sum(m["rows"] for m in index.manifests())
        step = max(1, -(-total // train_rows))  # every step-th row: the sample spans every shard
        parts = []
        for m in index.manifests():
            for lo, block in shard_blocks(index, m, 1 << 16):
                picks = np.arange(-(m["start"] + lo) % step, block.shape[0], step)  # global rows r % step == 0
                if len(picks):
                    parts.append(prepared_rows(block[picks], metric, doc_transform))
        x = np.concatenate(parts) if parts else np.zeros((0, meta["row_width"]), np.float32)
        sampled = x.shape[0]
        try:
            empty.train(x)
        except RuntimeError as e:
            raise ConfigError(f"--faiss {factory!r} cannot be trained on {sampled:,} rows of {index.url}: "
                              f"{str(e).strip().splitlines()[-1][:200]} (use fewer lists, e.g. IVF64, or Flat)") from None
    _write_index(fsu.join(url, TRAINED), empty, index.storage_options)
    return {"trained_on": sampled}


def add_block(index: Index, url: str, block: int, shards: list[int], metric: str, doc_transform=None) -> dict:
    """Add the rows of `shards` (consecutive) to a copy of the trained index; write parts/part-BLOCK.faiss."""
    part = _read_index(fsu.join(url, TRAINED), index.storage_options)
    by_shard = {m["shard"]: m for m in index.manifests()}
    rows = 0
    for s in shards:
        for _, rows_block in shard_blocks(index, by_shard[s], 1 << 15):
            part.add(prepared_rows(rows_block, metric, doc_transform))
            rows += rows_block.shape[0]
    _write_index(part_url(url, block), part, index.storage_options)
    return {"block": block, "rows": rows}


def part_url(url: str, block: int) -> str:
    return fsu.join(url, "parts", f"part-{block:05d}.faiss")


def merge(index: Index, url: str, blocks: int, key: dict) -> dict:
    """Append the parts in block order (FAISS ids = document indices); write index.faiss, then the
    manifest, then drop the parts."""
    faiss = _faiss()
    merged = _read_index(part_url(url, 0), index.storage_options)
    ivf = faiss.try_extract_index_ivf(merged) is not None
    for b in range(1, blocks):
        part = _read_index(part_url(url, b), index.storage_options)
        try:  # IVF parts number their rows from 0: shift them; flat codes append in order
            merged.merge_from(part, merged.ntotal if ivf else 0)
        except RuntimeError as e:
            raise ConfigError(f"--faiss {key['factory']!r} cannot be merged from blocks of shards "
                              f"({str(e).strip().splitlines()[-1][:160]}): use a Flat, IVF or PQ factory") from None
    sha = _write_index(fsu.join(url, MERGED), merged, index.storage_options)
    fs, path = fsu.url_to_fs(url, index.storage_options)
    fsu.write_json(fs, fsu.join(path, MANIFEST), {"key": key, "rows": int(merged.ntotal), "sha256": sha})
    fsu.remove(fs, fsu.join(path, "parts"), recursive=True)
    return {"rows": int(merged.ntotal)}


class FaissSearcher:
    """A built FAISS index, refused when it was built for other vectors than `key` says."""

    def __init__(self, url: str, key: dict, storage_options: dict, nprobe: int):
        fs, path = fsu.url_to_fs(fsu.join(url, MANIFEST), storage_options)
        if not fsu.exists(fs, path):
            raise StoreError(f"no FAISS index at {url}: build it with `bergson query --faiss {key['factory']!r}`")
        manifest = fsu.read_json(fs, path)
        if manifest.get("key") != key:
            theirs = manifest.get("key", {})
            what = [k for k in key if theirs.get(k) != key[k]]
            raise StoreError(f"FAISS index {url} was built for other vectors ({', '.join(what)} differ): "
                             "rerun `bergson query --faiss ...` to rebuild it")
        self.url, self.rows = url, manifest["rows"]
        self.index = _read_index(fsu.join(url, MERGED), storage_options, manifest["sha256"])
        faiss = _faiss()
        if faiss.try_extract_index_ivf(self.index) is not None:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)

    def search(self, qt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [R, k] float64, doc indices [R, k]) of prepared query rows; -inf past the last hit."""
        scores, ids = self.index.search(np.ascontiguousarray(qt, dtype=np.float32), k)
        scores = scores.astype(np.float64)
        scores[ids < 0] = -np.inf
        return scores, np.maximum(ids, 0)


def build_in_process(cfg) -> dict:
    """flows/faiss_index.py's steps as plain calls in this process (no Prefect): tests, benchmarks."""
    p = plan(cfg)
    if p["built"]:
        return {"faiss": p["url"], "built_now": False}
    index, _, doc_transform = faiss_source(cfg)
    trained = train(index, p["url"], cfg.faiss, cfg.metric, cfg.faiss_train_rows, doc_transform)
    for b, shards in enumerate(p["blocks"]):
        add_block(index, p["url"], b, shards, cfg.metric, doc_transform)
    return {"faiss": p["url"], "built_now": True, **trained, **merge(index, p["url"], len(p["blocks"]), p["key"])}
