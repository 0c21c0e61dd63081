"""Retrieval metrics of known supporting documents (fact tracing; Akyurek et al. 2022, Chang et al.
2024 "Scalable influence and fact tracing", TrackStar).

For one query with ranking r_1, r_2, ... and supporting set R:

- reciprocal rank = 1 / (position of the first supporting document), 0 when none is ranked;
- recall@k = |R intersect {r_1..r_k}| / min(k, |R|): the share of the supporting documents that fit
  in the top k, so an oracle ranking scores 1 at every k (and, when |R| <= k, this is plain recall).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def reciprocal_rank(ranking: Sequence, relevant: Iterable) -> float:
    rel = set(relevant)
    for pos, doc in enumerate(ranking, start=1):
        if doc in rel:
            return 1.0 / pos
    return 0.0


def recall_at_k(ranking: Sequence, relevant: Iterable, k: int) -> float:
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one supporting document")
    if k <= 0:
        raise ValueError("k must be positive")
    hits = len(rel.intersection(ranking[:k]))
    return hits / min(k, len(rel))
