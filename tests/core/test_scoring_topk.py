"""The streaming top-k (TopK, score_index) against a brute-force numpy reference, with exact ties:
the order is (score descending, document index ascending), NaN first as torch's sort puts it, and no
pre-filtering may drop a tied document with a lower index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bergson_core.index.store import Index
from bergson_core.scoring.score import TopK, score_index


def reference_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every row sorted by (NaN first, -score, doc index), first k."""
    docs = np.arange(scores.shape[1])
    order = np.stack([np.lexsort((docs, -np.nan_to_num(row, nan=0.0), ~np.isnan(row)))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order


def run_topk(scores: np.ndarray, k: int, blocks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    top, lo = TopK(scores.shape[0], k), 0
    for n in blocks:
        top.add(torch.from_numpy(scores[:, lo : lo + n]), lo)
        lo += n
    assert lo == scores.shape[1]
    return top.scores.numpy(), top.docs.numpy()


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])  # bitwise; NaN == NaN here


def test_more_than_k_ties_at_kth_score_across_two_blocks():
    # k = 3: docs 0 (5.0) and 12 (9.0) are certain; 2.0 ties at the 3rd score in 6 documents of the
    # first block (more than k) and 5 of the second. The answer is the lowest tied index, doc 2; a
    # bare torch.topk per block may keep any 3 of the 6 tied entries.
    first = np.array([5, 1, 2, 2, 0, 2, 2, 2, 2, 1], dtype=np.float32)
    second = np.array([2, 2, 9, 2, 2, 2, 0, 1], dtype=np.float32)
    scores = np.concatenate([first, second])[None, :]
    want = reference_topk(scores, 3)
    assert want[1].tolist() == [[12, 0, 2]]
    assert_same(run_topk(scores, 3, [len(first), len(second)]), want)
    # the same ties with the tied values reversed in position, so topk's own pick order matters
    rev = np.concatenate([first[::-1], second[::-1]])[None, :]
    assert_same(run_topk(rev, 3, [len(first), len(second)]), reference_topk(rev, 3))


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("seed", range(4))
def test_topk_with_many_ties_equals_brute_force(k, seed):
    # few distinct values: most rows tie at their k-th score, by a different count per row, and one
    # row is constant (every entry kept, the full-merge path)
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(5, 60)).astype(np.float32)
    scores[2] = 1.0
    scores[3, rng.integers(0, 60, 4)] = np.nan
    blocks = [7, 1, k, 20, 32 - k]
    assert_same(run_topk(scores, k, blocks), reference_topk(scores, k))


def test_topk_float64_and_k_above_the_block_and_corpus():
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((3, 25)).round(1)  # float64 (as TracIn adds), ties after rounding
    for k in (4, 10, 30):
        assert_same(run_topk(scores, k, [10, 10, 5]), reference_topk(scores, k))


def write_index(root, rows: np.ndarray, shard_rows: list[int], dtype: str) -> Index:
    index, start = Index(str(root)), 0
    index.write_meta({"num_shards": len(shard_rows), "row_width": rows.shape[1], "grad_dtype": dtype,
                      "shard_size": max(shard_rows), "spec_hash": "test"})
    for i, n in enumerate(shard_rows):
        index.write_shard(i, start, [str(start + j) for j in range(n)], [1] * n, rows[start : start + n], dtype)
        start += n
    assert start == rows.shape[0]
    return index


def sparse_signs(rng, n: int, width: int, nonzero: int) -> np.ndarray:
    """Rows with `nonzero` entries of +-1: norm sqrt(nonzero), so with 4 or 16 entries unit-normalising
    is exact, every score is exact in float32 and float16, and equal scores tie bitwise."""
    out = np.zeros((n, width), dtype=np.float32)
    for row in out:
        row[rng.choice(width, nonzero, replace=False)] = rng.choice([-1.0, 1.0], nonzero)
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("metric", ["inner", "cosine"])
def test_score_index_ties_equal_brute_force(tmp_path, dtype, metric):
    # 40 documents with few distinct scores (many more than k tie at the k-th one, across shards and
    # blocks); twice a row scores twice as high (inner) or the same (cosine); zero rows too
    rng = np.random.default_rng(3)
    rows = sparse_signs(rng, 40, 16, 4)
    rows[::5] *= 2
    rows[[6, 21]] = 0
    q = sparse_signs(rng, 3, 16, 16)
    index = write_index(tmp_path / "index", rows.astype(dtype), [17, 23], dtype)
    d = rows.astype(np.float64)
    if metric == "cosine":
        q = q / 4
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
    want = reference_topk(q.astype(np.float64) @ d.T, 5)  # exact: quarters and halves
    for block_rows in (3, 8, 40):
        got = score_index(index, q, metric, "individual", top_k=5, block_rows=block_rows)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    kth = want[0][:, -1:]
    assert ((q @ d.T) == kth).sum(axis=1).min() > 2  # ties at the k-th score are in play
    stored = np.concatenate([grad_matrix_of(index, 0), grad_matrix_of(index, 1)])
    np.testing.assert_array_equal(stored, rows.astype(dtype))  # cosine normalises a copy, not the store


def grad_matrix_of(index: Index, shard: int) -> np.ndarray:
    from bergson_core.index.store import grad_matrix

    return grad_matrix(index.open_shard(shard))  # the stored rows, after scoring (left unchanged)
