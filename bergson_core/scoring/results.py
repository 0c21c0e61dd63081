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
    corpus's; without a corpus (gone or changed since the build) text is null. Columns are built
    whole (numpy), so a full ranking of 100 x 1,000 pairs costs milliseconds."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)  # -inf: fewer documents than k
    q_idx, rank = np.nonzero(keep)  # row-major: by query, then rank
    d_idx = np.asarray(docs, dtype=np.int64)[keep]
    if aggregated:
        q_idx = np.full_like(q_idx, -1)
    unique, inverse = np.unique(d_idx, return_inverse=True)
    ulist = unique.tolist()
    if corpus is not None:
        texts = np.array(preview_texts(corpus, ulist, spec["text_column"], spec.get("prompt_column"),
                                       spec.get("completion_column")), dtype=object)
    else:
        texts = np.array([None] * len(ulist), dtype=object)
    id_col = spec.get("id_column")
    if doc_ids is not None:
        ids = np.array([doc_ids[d] for d in ulist], dtype=object)
    elif corpus is None:  # neither stored ids nor a trustworthy corpus: the row number
        ids = np.array([str(x) for x in ulist], dtype=object)
    else:
        ids = np.array([str(x) for x in corpus.dataset.select(ulist)[id_col]] if id_col and ulist
                       else [str(x) for x in ulist], dtype=object)
    return pa.table({
        "query_index": pa.array(q_idx.astype(np.int64), pa.int64()),
        "rank": pa.array(rank.astype(np.int32), pa.int32()),
        "doc_index": pa.array(d_idx, pa.int64()),
        "score": pa.array(scores[keep], pa.float64()),
        "doc_id": pa.array(ids[inverse] if len(ulist) else [], pa.string()),
        "text": pa.array(texts[inverse] if len(ulist) else [], pa.string()),
    })


def shown_rows(table: pa.Table, show: int) -> list[dict]:
    """The first `show` ranks of every query as plain dicts: what a terminal or a dashboard table
    shows, and what a flow returns (the full table stays in Parquet)."""
    if show <= 0 or table.num_rows == 0:
        return []
    rank = table.column("rank").to_numpy()
    return table.filter(pa.array(rank < show)).to_pylist()


def write_table(table: pa.Table, url: str, storage_options: dict | None = None) -> str:
    fs, path = fsu.url_to_fs(url, storage_options)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fsu.write_bytes(fs, path, sink.getvalue().to_pybytes())
    return url
