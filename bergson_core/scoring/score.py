"""Scoring queries against an index: query gradients with the index's own spec, then a streaming
block matmul over the shards that keeps the top-k documents per query in bounded memory.

score(q, d) = <g_q, g_d> (inner) or <g_q, g_d> / (|g_q| |g_d|) (cosine), summed over modules. A
positive score means that upweighting d lowers the query loss, to first order.
"""

from __future__ import annotations

import mmap
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from ..config import BuildConfig, ScoreConfig
from ..data.corpus import tokenize_rows
from ..errors import StoreError
from ..gradients.extract import compute_gradients, tracked_modules
from ..guards import check_query_model, refuse_empty_queries
from ..index.build import check_data_columns, check_optimizer_state, open_corpus, open_normalizers
from ..index.store import Index, grad_matrix
from ..model.loading import load_model


def index_build_config(meta: dict, cfg: ScoreConfig) -> BuildConfig:
    """The build config the index was made with, with this run's model/device overrides."""
    from ..index.bergson_format import check_not_foreign

    check_not_foreign(meta, cfg.index)  # rows projected by Bergson: no query gradient made here matches them
    spec = {k: v for k, v in meta["spec"].items() if k in BuildConfig.model_fields}
    spec.update(index=cfg.index, device=cfg.device, storage_options=cfg.storage_options,
                gradient_checkpointing=cfg.gradient_checkpointing, device_map=cfg.device_map,
                offload_folder=cfg.offload_folder)
    if cfg.model:
        spec["model"] = cfg.model
    if cfg.dtype != "auto":
        spec["dtype"] = cfg.dtype
    return BuildConfig(**spec)


@dataclass
class QueryGradients:
    grads: np.ndarray  # [Q, D]
    texts: list[str]
    model_warning: str | None = None  # set when --allow-model-mismatch let another model through


def query_model_fingerprint(meta: dict, cfg: ScoreConfig) -> str:
    """Fingerprint of the model the queries are computed with (loaded into the process cache)."""
    from ..index.build import model_fingerprint

    return model_fingerprint(load_model(index_build_config(meta, cfg)).model)


def query_gradients(meta: dict, cfg: ScoreConfig, queries=None, columns=None) -> QueryGradients:
    """Gradients of the queries with exactly the index's gradient spec; refuses a mismatch. `queries`
    (a Corpus, e.g. prompts typed to `bergson query`) and its (text, prompt, completion) `columns`
    replace cfg.queries and its columns."""
    bcfg = index_build_config(meta, cfg)
    if queries is None:
        queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    text_col, prompt_col, comp_col = columns or cfg.query_columns(bcfg)
    check_data_columns(queries, text_col, prompt_col, comp_col, conversation=bcfg.conversation_column)
    check_optimizer_state(bcfg, meta)
    loaded = load_model(bcfg)
    modules = tracked_modules(loaded, bcfg)
    if [m.to_json() for m in modules] != meta["modules"]:
        raise StoreError(
            f"the query model's module layout differs from index {cfg.index}: score with the model it was built with"
        )
    warning = check_query_model(meta, query_model_fingerprint(meta, cfg), cfg.allow_model_mismatch, cfg.index)
    docs = tokenize_rows(
        queries, 0, len(queries), loaded.tokenizer, bcfg.max_length, text_col, prompt_col, comp_col, None,
        bcfg.conversation_column,  # an index of conversations is queried with conversations
    )
    refuse_empty_queries(docs, queries.uri)
    normalizers = open_normalizers(bcfg, loaded, modules)
    width = sum(m.width for m in modules)
    grads = np.zeros((len(docs), width), dtype=np.float32)
    step = rows_per_block(width, len(docs) or 1)  # a bounded block of queries at a time: wide rows held once
    for lo in range(0, len(docs), step):
        block, _ = compute_gradients(loaded, modules, docs[lo : lo + step], bcfg, cfg.batch_tokens,
                                     normalizers=normalizers)
        grads[lo : lo + step] = block
        del block
    texts = preview_texts(queries, list(range(len(queries))), text_col, prompt_col, comp_col)
    return QueryGradients(grads, texts, warning)


def preview_texts(corpus, rows: list[int], text_col, prompt_col=None, comp_col=None, width: int = 160) -> list[str]:
    if not rows:
        return []
    sub = corpus.dataset.select(rows)
    if prompt_col and comp_col:
        texts = [f"{_text(p)} {_text(c)}" for p, c in zip(sub[prompt_col], sub[comp_col])]
    else:
        texts = [_text(t) for t in sub[text_col]]
    return [t if len(t) <= width else t[: width - 1] + "…" for t in texts]


def _text(value) -> str:
    return "" if value is None else str(value)  # a null is empty, never the word None


BLOCK_BYTES = 64 << 20  # corpus rows per scored block are capped so one block holds at most this


def rows_per_block(width: int, block_rows: int, itemsize: int = 4) -> int:
    """Rows per scored block: --block-rows, fewer when rows are wide (full gradients), so that a
    block of float32 rows stays within BLOCK_BYTES whatever the corpus size."""
    return max(1, min(block_rows, BLOCK_BYTES // max(1, width * itemsize)))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)


def prepare_queries(q: np.ndarray, metric: str, aggregate: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Query rows as used in the matmul: unit-normalised for cosine, averaged for `mean`."""
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64 if dtype == torch.float64 else np.float32))
    if metric == "cosine":
        qt = _unit(qt)
    if aggregate == "mean":
        qt = qt.mean(dim=0, keepdim=True)
    return qt


class TopK:
    """Running top-k per row across blocks; ties broken by the lower document index."""

    def __init__(self, rows: int, k: int, dtype: torch.dtype = torch.float32):
        self.k = k
        self.scores = torch.full((rows, 0), -float("inf"), dtype=dtype)
        self.docs = torch.zeros((rows, 0), dtype=torch.long)

    def add(self, scores: torch.Tensor, first_doc: int) -> None:  # scores [R, n]
        n = scores.shape[1]
        if n > self.k:
            # Pre-filter so the exact sort below sees ~k candidates per row, not the whole block. An
            # entry strictly below its row's k-th largest block score is beaten by k entries of its
            # own block, so it can never be in the top-k; every other entry (ties with the k-th
            # value, NaN) is kept, so a tied document with a lower index is never dropped.
            # topk(m), m = the most entries kept in any row, holds all of them in every row
            # (topk ranks NaN highest, as the sort does).
            vals, cols = scores.topk(self.k, dim=1)  # [R, k]
            m = n - int((scores < vals[:, -1:]).sum(dim=1).min())  # >= k
            if m < n:
                if m > self.k:
                    vals, cols = scores.topk(m, dim=1)
                self._merge(vals, cols + first_doc)
                return
        docs = torch.arange(first_doc, first_doc + n).expand_as(scores)
        self._merge(scores, docs)

    def _merge(self, scores: torch.Tensor, docs: torch.Tensor) -> None:
        dtype = torch.promote_types(self.scores.dtype, scores.dtype)
        s = torch.cat([self.scores.to(dtype), scores.to(dtype)], dim=1)
        d = torch.cat([self.docs, docs], dim=1)
        # sort by doc index first, then stable sort by score: deterministic tie order
        by_doc = torch.argsort(d, dim=1, stable=True)
        s, d = s.gather(1, by_doc), d.gather(1, by_doc)
        by_score = torch.argsort(s, dim=1, descending=True, stable=True)[:, : self.k]
        self.scores, self.docs = s.gather(1, by_score), d.gather(1, by_score)


class BlockDecoder:
    """Copies of corpus blocks in the scoring dtype (float32 unless asked), written into one buffer
    reused across blocks: a fresh [n, D] array per block costs page faults, and torch's copy_
    converts float16 with SIMD (numpy's does not). Widening is exact, so the values are the same
    as np.array's."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.buf: torch.Tensor | None = None

    def __call__(self, block) -> torch.Tensor:  # [n, D]; valid until the next call
        n, width = block.shape
        if self.buf is None or self.buf.shape[1] != width or self.buf.shape[0] < n:
            self.buf = None  # free the old buffer before allocating the new one
            self.buf = torch.empty((n, width), dtype=self.dtype)
        if isinstance(block, torch.Tensor):
            return self.buf[:n].copy_(block)
        with warnings.catch_warnings():  # a read-only memory map is fine as the source of a copy
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(np.ascontiguousarray(block))
        return self.buf[:n].copy_(src)


def score_block(qt: torch.Tensor, block, metric: str, aggregate: str,
                decode: BlockDecoder | None = None) -> torch.Tensor:
    """Scores [R, n] of prepared queries against a block of corpus rows. With `decode` the block is
    decoded into its reused buffer (and normalised there for cosine) instead of a fresh copy."""
    if decode is None:
        decode = BlockDecoder(qt.dtype)
    d = decode(block)
    if metric == "cosine":
        d = d.div_(d.norm(dim=1, keepdim=True).clamp(min=1e-30))  # in place: d is our own copy; as _unit
    s = qt @ d.T  # [R, n]
    if aggregate == "max":
        s = s.max(dim=0, keepdim=True).values
    return s


def shard_blocks(index: Index, manifest: dict, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows [n, D]) of a shard, `rows` at a time, read from a verified local memory map
    whose pages are dropped from this process's memory after each block: scoring a shard of full
    gradients never keeps more than one block resident, whatever the shard's size (the pages stay in
    the OS page cache, so nothing is read twice)."""
    path = index._local_copy(manifest["shard"], manifest)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    table = ipc.open_file(pa.BufferReader(pa.py_buffer(mm))).read_all()
    if table.num_rows != manifest["rows"]:
        raise StoreError(f"shard {manifest['shard']} of {index.url} has {table.num_rows} rows, "
                         f"manifest says {manifest['rows']}")
    grads = grad_matrix(table)
    drop = getattr(mmap, "MADV_DONTNEED", None)
    for lo in range(0, grads.shape[0], rows):
        yield lo, grads[lo : lo + rows]
        if drop is not None:
            mm.madvise(drop)


def score_index(
    index: Index,
    q: np.ndarray,
    metric: str,
    aggregate: str,
    top_k: int,
    block_rows: int,
    on_shard: Callable[[dict], None] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    doc_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [R, k], doc indices [R, k]) of every query over all shards of the index.

    `transform` maps the query rows [Q, D] and `doc_transform` each block of corpus rows [n, D]
    before scoring (e.g. a preconditioner: H^-1 on the queries, or H^-1/2 on both sides). Blocks
    hold at most `block_rows` rows and BLOCK_BYTES bytes; products are taken in `dtype`."""
    meta = index.meta()
    manifests = index.manifests()
    if len(manifests) != meta["num_shards"]:
        raise StoreError(
            f"index {index.url} is incomplete ({len(manifests)}/{meta['num_shards']} shards): rerun `bergson build`"
        )
    if q.shape[1] != meta["row_width"]:
        raise StoreError(f"query gradients have {q.shape[1]} columns, index {index.url} has {meta['row_width']}")
    qt = prepare_queries(q if transform is None else transform(q), metric, aggregate, dtype)
    rows = 1 if aggregate in ("mean", "max") else qt.shape[0]
    top = TopK(rows, top_k, dtype)
    decode = BlockDecoder(dtype)
    per_block = rows_per_block(meta["row_width"], block_rows)
    for manifest in manifests:
        for lo, block in shard_blocks(index, manifest, per_block):
            if doc_transform is not None:
                block = doc_transform(np.asarray(block, dtype=np.float32))
            top.add(score_block(qt, block, metric, aggregate, decode), manifest["start"] + lo)
        if on_shard:
            on_shard(manifest)
    return top.scores.numpy(), top.docs.numpy()
