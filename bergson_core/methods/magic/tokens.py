"""MAGIC with a training weight per token: document d's loss becomes

    loss_d = sum_t w_{d,t} ce_{d,t}        (divided by d's number of counted tokens for "mean")

with ce_{d,t} the cross-entropy of predicting d's token t, so with every w_{d,t} = 1 training is
exactly the document-weighted training at w_d = 1, and dQ/dw_d = sum_t dQ/dw_{d,t} there. The
metagradients [Q, N, L] give OUTPUT/token_scores.parquet (score = -dQ_q/dw_{d,t} for every counted
token); their sum over tokens is the document score in topk.parquet.
"""

from __future__ import annotations

import numpy as np
import torch

from ...data.corpus import Doc

TOKEN_SCORES_FILE = "token_scores.parquet"


def ones(docs: list[Doc]) -> torch.Tensor:
    """All-one token weights [N, L], L the longest document (the training the metagradient is taken at)."""
    return torch.ones(len(docs), max((len(d.input_ids) for d in docs), default=0), dtype=torch.float64)


def counted(docs: list[Doc], width: int) -> np.ndarray:
    """[N, width] True where a weight acts: a position t >= 1 whose label carries loss."""
    mask = np.zeros((len(docs), width), dtype=bool)
    for i, d in enumerate(docs):
        mask[i, 1:len(d.labels)] = np.asarray(d.labels[1:]) != -100
    return mask


def token_table(scores: np.ndarray, docs: list[Doc], doc_ids: list[str], tokenizer, query_index: np.ndarray):
    """query_index, doc_index, doc_id, position, token_id, token, score for every counted token of
    every document and query; `scores` [Q, N, L], `query_index` [Q]."""
    import pyarrow as pa

    d, t = np.nonzero(counted(docs, scores.shape[2]))  # [K] each, in (document, position) order
    token_ids = np.array([docs[i].input_ids[j] for i, j in zip(d, t)], dtype=np.int64)
    text = {int(u): tokenizer.decode([int(u)]) for u in np.unique(token_ids)}
    q = len(query_index)
    return pa.table({
        "query_index": pa.array(np.repeat(query_index, len(d)), pa.int64()),
        "doc_index": pa.array(np.tile(d, q), pa.int64()),
        "doc_id": pa.array([doc_ids[i] for i in d] * q, pa.string()),
        "position": pa.array(np.tile(t, q), pa.int32()),
        "token_id": pa.array(np.tile(token_ids, q), pa.int64()),
        "token": pa.array([text[int(u)] for u in token_ids] * q, pa.string()),
        "score": pa.array(scores[:, d, t].ravel(), pa.float64()),
    })
