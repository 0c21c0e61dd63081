"""Score results as tables: the top-k Parquet file and its row layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fs as fsu
from .score import preview_texts

TOPK_FILE = "topk.parquet"


def topk_table(scores: np.ndarray, docs: np.ndarray, corpus, spec: dict, aggregated: bool,
               doc_ids: dict[int, str] | None = None) -> pa.Table:
    """One row per (query, rank): query_index (-1 for a mean/max aggregate), rank, doc_index,
    score, doc_id, text (a preview of the document). `doc_ids` (from the index) win over the
    corpus's; without a corpus (gone or changed since the build) text is null."""
    q_idx, rank, d_idx, score = [], [], [], []
    for qi in range(scores.shape[0]):
        for r in range(scores.shape[1]):
            if not np.isfinite(scores[qi, r]):
                continue  # fewer documents than k
            q_idx.append(-1 if aggregated else qi)
            rank.append(r)
            d_idx.append(int(docs[qi, r]))
            score.append(float(scores[qi, r]))
    unique = sorted(set(d_idx))
    texts = dict(zip(unique, preview_texts(
        corpus, unique, spec["text_column"], spec.get("prompt_column"), spec.get("completion_column"))
        if corpus is not None else [None] * len(unique)))
    id_col = spec.get("id_column")
    ids = doc_ids if doc_ids is not None else dict(zip(unique, (
        map(str, corpus.dataset.select(unique)[id_col]) if id_col and unique else map(str, unique))))
    return pa.table({
        "query_index": pa.array(q_idx, pa.int64()),
        "rank": pa.array(rank, pa.int32()),
        "doc_index": pa.array(d_idx, pa.int64()),
        "score": pa.array(score, pa.float64()),
        "doc_id": pa.array([ids[d] for d in d_idx], pa.string()),
        "text": pa.array([texts[d] for d in d_idx], pa.string()),
    })


def write_table(table: pa.Table, url: str, storage_options: dict | None = None) -> str:
    fs, path = fsu.url_to_fs(url, storage_options)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fsu.write_bytes(fs, path, sink.getvalue().to_pybytes())
    return url
