"""Which documents each retrained model keeps: masks [S, N] of 0/1 drawn from a seed.

- random: S independent subsets, each keeping round(fraction * N) documents chosen uniformly
  (the datamodel / LDS setting of Ilyas et al. 2022 and Park et al. 2023, TRAK);
- leave-out: the documents in a seeded order cut into non-overlapping chunks of k % of the corpus;
  subset i keeps everything except chunk i.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import ConfigError


def random_subsets(num_docs: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """[count, num_docs] bool; every row keeps exactly round(fraction * num_docs) documents."""
    keep = int(round(fraction * num_docs))
    if not 0 < keep < num_docs:
        raise ConfigError(f"--subset-fraction {fraction} keeps {keep} of {num_docs} documents: keep at least one "
                          "and leave at least one out")
    rng = np.random.default_rng([seed, num_docs, 1])
    masks = np.zeros((count, num_docs), dtype=bool)
    for i in range(count):
        masks[i, rng.permutation(num_docs)[:keep]] = True
    return masks


def leave_out_chunks(num_docs: int, percent: float, seed: int) -> np.ndarray:
    """[ceil(100 / percent), num_docs] bool: row i leaves out chunk i of a seeded permutation."""
    size = max(1, int(round(num_docs * percent / 100.0)))
    if size >= num_docs:
        raise ConfigError(f"--leave-out-percent {percent} of {num_docs} documents leaves nothing to train on")
    order = np.random.default_rng([seed, num_docs, 2]).permutation(num_docs)
    chunks = [order[i:i + size] for i in range(0, num_docs, size)]
    masks = np.ones((len(chunks), num_docs), dtype=bool)
    for i, chunk in enumerate(chunks):
        masks[i, chunk] = False
    return masks


def draw_subsets(num_docs: int, kind: str, count: int = 32, fraction: float = 0.5, percent: float = 10.0,
                 seed: int = 0) -> np.ndarray:
    if kind == "random":
        return random_subsets(num_docs, count, fraction, seed)
    if kind == "leave-out":
        return leave_out_chunks(num_docs, percent, seed)
    raise ConfigError(f"unknown subset kind {kind!r}: use random or leave-out")


def mask_digest(mask: np.ndarray) -> str:
    """A short content hash of one subset: part of its retraining's cache key."""
    return hashlib.sha256(np.packbits(mask.astype(bool)).tobytes() + str(mask.size).encode()).hexdigest()[:16]
