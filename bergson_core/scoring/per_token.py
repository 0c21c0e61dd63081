"""Per-token attribution (`bergson query --per-token`): which tokens of a training document carry
its score for a prompt.

A document's loss is a sum over its tokens of the loss of predicting each token, so its gradient
is the sum of those tokens' loss gradients, and any linear map of it (projection, optimizer-state
normaliser, preconditioner) splits the same way. Token j's row is therefore the document's
gradient with the loss kept on token j alone, computed by the index's own pipeline
(compute_gradients on a copy of the document whose labels are masked except at j); its
contribution is <query, row_j> (divided by the norm of the whole document row for cosine). The
contributions of a document sum to its score; a token without loss (a prompt token, the first
token) has no row and contributes exactly 0. Cost: one forward and backward pass per loss token
of each ranked document.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ..data.corpus import Doc, tokenize_rows
from ..errors import StoreError
from .results import write_table
from .score import index_build_config, prepare_queries

PER_TOKEN_FILE = "per_token.parquet"


def single_token_docs(doc: Doc) -> tuple[list[int], list[Doc]]:
    """(positions, copies of doc with loss only at that position) for every position with loss."""
    positions = [j for j in range(1, len(doc.labels)) if doc.labels[j] != -100]
    copies = [Doc(doc.index, doc.doc_id, doc.input_ids, [-100] * j + [doc.labels[j]] + [-100] * (len(doc.labels) - j - 1))
              for j in positions]
    return positions, copies


def token_rows(engine, doc: Doc) -> np.ndarray:
    """Rows [T, D] of each position's share of the document's gradient (zeros without loss), as the
    scores see them (both-sided preconditioner applied); they sum to the document's row."""
    from ..gradients.extract import compute_gradients, tracked_modules
    from ..index.build import open_normalizers
    from ..model.loading import load_model

    bcfg = index_build_config(engine.meta, engine.scfg)
    loaded = load_model(bcfg)
    modules = tracked_modules(loaded, bcfg)
    positions, copies = single_token_docs(doc)
    width = engine.meta["row_width"]
    rows = np.zeros((len(doc.input_ids), width), dtype=np.float64)
    if copies:
        grads, _ = compute_gradients(loaded, modules, copies, bcfg, engine.cfg.batch_tokens,
                                     normalizers=open_normalizers(bcfg, loaded, modules))
        if bcfg.loss_reduction == "mean":  # the document's loss is the mean over its loss tokens
            grads = grads / len(copies)
        rows[positions] = grads
    if engine.doc_transform is not None:
        rows = np.asarray(engine.doc_transform(rows), dtype=np.float64)
    return rows


def per_token_table(engine, q: np.ndarray, pairs: list[tuple[int, int]]) -> pa.Table:
    """query_index, doc_index, position, token, score for each (query, document) pair."""
    if engine.corpus is None:
        raise StoreError(f"--per-token needs the corpus index {engine.cfg.index} was built from, and it is gone "
                         "or changed since the build")
    spec = engine.meta["spec"]
    from ..model.loading import load_model

    tokenizer = load_model(index_build_config(engine.meta, engine.scfg)).tokenizer
    qt = prepare_queries(q if engine.transform is None else engine.transform(q), engine.cfg.metric, "individual",
                         torch.float64).numpy()  # [Q, D]
    cols: dict[str, list] = {"query_index": [], "doc_index": [], "position": [], "token": [], "score": []}
    cache: dict[int, tuple[np.ndarray, list[int]]] = {}
    for qi, d in pairs:
        if d not in cache:
            doc = tokenize_rows(engine.corpus, d, d + 1, tokenizer, spec["max_length"], spec["text_column"],
                                spec.get("prompt_column"), spec.get("completion_column"))[0]
            cache[d] = (token_rows(engine, doc), doc.input_ids)
        rows, ids = cache[d]
        contrib = rows @ qt[qi]  # [T]
        if engine.cfg.metric == "cosine":
            contrib = contrib / max(float(np.linalg.norm(rows.sum(axis=0))), 1e-30)
        cols["query_index"] += [qi] * len(ids)
        cols["doc_index"] += [d] * len(ids)
        cols["position"] += list(range(len(ids)))
        cols["token"] += [tokenizer.decode([t]) for t in ids]
        cols["score"] += contrib.tolist()
    return pa.table({"query_index": pa.array(cols["query_index"], pa.int64()),
                     "doc_index": pa.array(cols["doc_index"], pa.int64()),
                     "position": pa.array(cols["position"], pa.int32()),
                     "token": pa.array(cols["token"], pa.string()),
                     "score": pa.array(cols["score"], pa.float64())})


def write_per_token(engine, q: np.ndarray, ranked: list[tuple[np.ndarray, np.ndarray]], url: str) -> dict:
    """Per-token scores of every ranked (finite-score) document of every query, written to `url`;
    returns {output, rows, strongest}: each document's tokens with its strongest marked."""
    pairs = []
    for scores, docs in ranked:
        for qi in range(scores.shape[0]):
            pairs += [(qi, int(d)) for s, d in zip(scores[qi], docs[qi]) if np.isfinite(s) and (qi, int(d)) not in pairs]
    table = per_token_table(engine, q, pairs)
    write_table(table, url, engine.cfg.storage_options)
    return {"output": url, "rows": table.num_rows, "strongest": strongest(table)}


def strongest(table: pa.Table, n: int = 3) -> dict[str, list[tuple[str, bool]]]:
    """"query:doc" -> the document's (token, among its n strongest by |score|), for the terminal."""
    out: dict[str, list[tuple[str, bool]]] = {}
    df = table.to_pandas()
    for (qi, d), g in df.groupby(["query_index", "doc_index"], sort=False):
        top = set(g.score.abs().nlargest(n).index)
        out[f"{qi}:{d}"] = [(t, i in top) for i, t in zip(g.index, g.token)]
    return out
