"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK", sec. 2.2).

For query q, subsets S_1..S_M and attribution scores tau(q, d):

    predicted_j = sum_{d in S_j} tau(q, d)        (summed scores of the kept documents)
    measured_j  = loss of q under the model retrained on S_j
    LDS(q)      = Spearman(predicted, -measured)

The sign follows the project's convention that a positive score means "upweighting d lowers the
query loss", so a perfect method has LDS +1. The report gives the per-query values, their mean and
the standard error of the mean over queries (std with ddof=1 / sqrt(#queries)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (as scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    n = len(x)
    while start < n:
        stop = start + 1
        while stop < n and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson correlation of the average ranks; NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


@dataclass
class LDSResult:
    per_query: np.ndarray  # [Q], NaN where a query's scores or losses are constant
    mean: float
    stderr: float
    queries: int  # queries with a defined correlation

    def to_json(self) -> dict:
        return {"lds": self.mean, "lds_stderr": self.stderr, "queries": self.queries,
                "per_query": [None if math.isnan(v) else float(v) for v in self.per_query]}


def predicted(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Summed scores of the kept documents: [S, Q] from scores [Q, N] and masks [S, N]."""
    return masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64).T


def mean_stderr(values: np.ndarray) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se, len(v)


def lds(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> LDSResult:
    """LDS of scores [Q, N] against the measured losses [S, Q] of models retrained on masks [S, N]."""
    scores = np.asarray(scores, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if scores.shape[1] != masks.shape[1] or losses.shape != (masks.shape[0], scores.shape[0]):
        raise ValueError(f"shapes do not agree: scores {scores.shape}, masks {masks.shape}, losses {losses.shape}")
    pred = predicted(scores, masks)  # [S, Q]
    per_query = np.array([spearman(pred[:, q], -losses[:, q]) for q in range(scores.shape[0])])
    mean, se, count = mean_stderr(per_query)
    return LDSResult(per_query, mean, se, count)
