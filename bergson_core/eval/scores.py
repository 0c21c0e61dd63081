"""Reading score files into a dense [queries, documents] matrix for LDS.

Accepted: the topk.parquet written by `bergson score` (run with --top-k at least the corpus size, so
every document has a score), any Parquet file with columns query_index, doc_index, score, or a
folder holding a topk.parquet.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fs as fsu
from ..errors import InputError
from ..scoring.results import TOPK_FILE

COLUMNS = ("query_index", "doc_index", "score")


def resolve_score_file(url: str, storage_options: dict | None = None) -> str:
    fs, path = fsu.url_to_fs(url, storage_options)
    if fs.isdir(path):
        inner = fsu.join(path, TOPK_FILE)
        if not fs.exists(inner):
            raise InputError(f"score folder {url} has no {TOPK_FILE}: pass the Parquet file itself")
        return fsu.join(url.rstrip("/"), TOPK_FILE)
    if not fs.exists(path):
        raise InputError(f"score file {url} does not exist")
    return url


def read_score_table(url: str, storage_options: dict | None = None) -> pa.Table:
    url = resolve_score_file(url, storage_options)
    fs, path = fsu.url_to_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        table = pq.read_table(pa.BufferReader(f.read()))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"score file {url} lacks column(s) {', '.join(missing)}: give a topk.parquet of "
                         "`bergson score` or a Parquet with query_index, doc_index, score")
    return table


def dense_scores(url: str, num_queries: int, num_docs: int, storage_options: dict | None = None) -> np.ndarray:
    """[num_queries, num_docs] float64; refuses a file that misses any (query, document) pair."""
    table = read_score_table(url, storage_options)
    q = np.asarray(table.column("query_index").to_numpy(), dtype=np.int64)
    d = np.asarray(table.column("doc_index").to_numpy(), dtype=np.int64)
    s = np.asarray(table.column("score").to_numpy(), dtype=np.float64)
    if len(q) and q.min() < 0:
        raise InputError(f"score file {url} holds aggregated scores (query_index -1): score with "
                         "--aggregate individual")
    if len(q) and (q.max() >= num_queries or d.min() < 0 or d.max() >= num_docs):
        raise InputError(f"score file {url} names queries up to {q.max()} and documents up to {d.max()}, but the "
                         f"bank has {num_queries} queries and {num_docs} documents: score the same queries and corpus")
    out = np.full((num_queries, num_docs), np.nan)
    out[q, d] = s
    covered = int(np.isfinite(out).sum())
    if covered < out.size:
        per = covered // max(num_queries, 1)
        raise InputError(f"score file {url} scores about {per} of {num_docs} documents per query; LDS needs all of "
                         f"them: rerun `bergson score` with --top-k {num_docs}")
    return out


def method_name(url: str) -> str:
    """A default method name: the score file's folder name (or the file stem)."""
    url = url.rstrip("/")
    stem = os.path.basename(url)
    if stem == TOPK_FILE:
        stem = os.path.basename(os.path.dirname(url))
    return os.path.splitext(stem)[0]
