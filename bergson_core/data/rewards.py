"""Per-document advantages for a reward-weighted (policy-gradient) loss.

The loss of document d is A_d * CE_d with A_d = r_d - mean(r over the documents that share d's
prompt) (the prompt column; without one, the whole corpus is one group), so its gradient is
A_d * grad(CE_d) = -A_d * grad(log p(d)): the REINFORCE direction with a per-prompt baseline
(as in GRPO's group-relative advantage, without the division by the standard deviation).
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError

_cache: dict[tuple, np.ndarray] = {}
_lock = threading.Lock()


def advantages(corpus, reward_column: str, group_column: str | None = None) -> np.ndarray:
    """A [N] (float64) of the whole corpus, cached per corpus: a shard needs every document of a group."""
    key = (corpus.fingerprint, id(corpus.dataset), reward_column, group_column)
    with _lock:
        if key not in _cache:
            _cache[key] = _advantages(corpus, reward_column, group_column)
        return _cache[key]


def _advantages(corpus, reward_column: str, group_column: str | None) -> np.ndarray:
    col = corpus.dataset.data.column(reward_column).combine_chunks()
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        raise InputError(f"{corpus.uri}: reward column {reward_column!r} holds {col.type}, not numbers")
    rewards = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise InputError(f"{corpus.uri} row {bad[0]}: reward column {reward_column!r} is {rewards[bad[0]]} "
                         f"({bad.size} rows missing, NaN or infinite): give every document a finite reward")
    if group_column is None:
        return rewards - rewards.mean()
    groups = pc.dictionary_encode(corpus.dataset.data.column(group_column).combine_chunks()).indices
    groups = groups.to_numpy(zero_copy_only=False)  # [N] group of each document
    sums = np.bincount(groups, weights=rewards)
    counts = np.bincount(groups)
    return rewards - (sums / counts)[groups]
