"""LDS, subsets and retrieval metrics on cases whose answers are known independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bergson_core.eval.lds import lds, rankdata, spearman
from bergson_core.eval.metrics import recall_at_k, reciprocal_rank
from bergson_core.eval.subsets import draw_subsets, leave_out_chunks, random_subsets


# -- a linear model whose influence is exact in closed form ------------------------------------------
class Ridge:
    """Weighted ridge regression theta(w) = (X^T W X + lam I)^-1 X^T W y with squared-error query
    losses. The influence of upweighting document i on query q is, in closed form,
    score(q, i) = grad L_q^T H^-1 grad l_i (positive = upweighting lowers the query loss)."""

    def __init__(self, n=200, d=4, queries=24, lam=1.0, seed=0):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(n, d))
        beta = rng.normal(size=d)
        self.y = self.X @ beta + rng.normal(size=n)
        self.Xq = rng.normal(size=(queries, d))
        self.yq = self.Xq @ beta + rng.normal(size=queries)
        self.lam = lam

    def fit(self, w):
        X, d = self.X, self.X.shape[1]
        return np.linalg.solve(X.T @ (w[:, None] * X) + self.lam * np.eye(d), X.T @ (w * self.y))

    def query_losses(self, w):
        return 0.5 * (self.Xq @ self.fit(w) - self.yq) ** 2

    def influence(self):
        X = self.X
        theta = self.fit(np.ones(len(X)))
        H = X.T @ X + self.lam * np.eye(X.shape[1])
        g_train = (X @ theta - self.y)[:, None] * X  # [N, D]
        g_query = (self.Xq @ theta - self.yq)[:, None] * self.Xq  # [Q, D]
        return g_query @ np.linalg.solve(H, g_train.T)  # [Q, N]

    def retrain(self, masks):
        return np.stack([self.query_losses(m.astype(float)) for m in masks])  # [S, Q]


@pytest.fixture(scope="module")
def ridge():
    return Ridge()


def test_exact_influence_of_a_linear_model_has_lds_near_one(ridge):
    scores = ridge.influence()
    n = ridge.X.shape[0]
    for masks, floor in ((random_subsets(n, 50, 0.5, seed=0), 0.9), (leave_out_chunks(n, 5.0, seed=0), 0.99)):
        res = lds(scores, masks, ridge.retrain(masks))
        assert res.queries == scores.shape[0]
        assert res.mean > floor, (masks.shape, res.mean)
        assert res.stderr < 0.05
    # the opposite sign is as wrong as can be
    masks = leave_out_chunks(n, 5.0, seed=1)
    assert lds(-scores, masks, ridge.retrain(masks)).mean < -0.99


def test_lds_of_random_scores_is_zero_within_its_standard_error(ridge):
    n = ridge.X.shape[0]
    masks = random_subsets(n, 40, 0.5, seed=3)
    losses = ridge.retrain(masks)
    rng = np.random.default_rng(0)
    first = lds(rng.normal(size=(24, n)), masks, losses)
    assert abs(first.mean) <= 2 * first.stderr and 0 < first.stderr < 0.1
    # the reported standard error is calibrated: the 95 % interval covers 0 about 95 % of the time
    covered = []
    for _ in range(300):
        res = lds(rng.normal(size=(24, n)), masks, losses)
        covered.append(abs(res.mean) <= 1.96 * res.stderr)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_lds_uses_the_kept_documents_only():
    """A score on a document that no subset ever drops cannot change any ranking."""
    rng = np.random.default_rng(1)
    masks = random_subsets(30, 20, 0.5, seed=2)
    masks[:, 0] = True
    losses = rng.normal(size=(20, 3))
    scores = rng.normal(size=(3, 30))
    shifted = scores.copy()
    shifted[:, 0] += 1e6
    np.testing.assert_allclose(lds(scores, masks, losses).per_query, lds(shifted, masks, losses).per_query)


# -- rank correlation -------------------------------------------------------------------------------
def test_rankdata_averages_ties():
    np.testing.assert_array_equal(rankdata(np.array([10.0, 20.0, 20.0, 5.0])), [2.0, 3.5, 3.5, 1.0])


def test_spearman_matches_the_textbook_formula_without_ties():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=25), rng.normal(size=25)
    rx = np.argsort(np.argsort(x)) + 1
    ry = np.argsort(np.argsort(y)) + 1
    n = len(x)
    textbook = 1 - 6 * np.sum((rx - ry) ** 2) / (n * (n * n - 1))
    assert spearman(x, y) == pytest.approx(textbook, abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones_like(x)))


# -- subsets ----------------------------------------------------------------------------------------
def test_random_subsets_keep_the_asked_fraction_and_repeat_by_seed():
    masks = random_subsets(101, 16, 0.3, seed=5)
    assert masks.shape == (16, 101) and (masks.sum(1) == 30).all()
    assert np.array_equal(masks, random_subsets(101, 16, 0.3, seed=5))
    assert not np.array_equal(masks, random_subsets(101, 16, 0.3, seed=6))
    assert len({m.tobytes() for m in masks}) == 16


def test_leave_out_chunks_leave_each_document_out_exactly_once():
    masks = draw_subsets(95, "leave-out", percent=10.0, seed=0)
    assert masks.shape[0] == 10  # nine chunks of 10 (9.5 rounded), the last one of 5
    np.testing.assert_array_equal((~masks).sum(0), np.ones(95))
    assert list((~masks).sum(1)) == [10] * 9 + [5]


# -- retrieval metrics ------------------------------------------------------------------------------
def test_oracle_ranking_has_recall_one_and_reversed_ranking_zero():
    docs = [f"d{i}" for i in range(50)]
    relevant = ["d7", "d23", "d41"]
    oracle = relevant + [d for d in docs if d not in relevant]
    reversed_ = oracle[::-1]
    for k in (1, 3, 5, 10):
        assert recall_at_k(oracle, relevant, k) == 1.0
        assert recall_at_k(reversed_, relevant, k) == 0.0
    assert reciprocal_rank(oracle, relevant) == 1.0
    assert reciprocal_rank(reversed_, relevant) == pytest.approx(1 / 48)
    assert recall_at_k(reversed_, relevant, 50) == 1.0


def test_recall_counts_the_share_found():
    ranking = ["a", "x", "b", "y", "z", "c"]
    assert recall_at_k(ranking, ["a", "b", "c"], 1) == 1.0  # one found, one fits
    assert recall_at_k(ranking, ["a", "b", "c"], 2) == 0.5
    assert recall_at_k(ranking, ["a", "b", "c"], 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranking, ["a", "b", "c"], 6) == 1.0
    assert reciprocal_rank(ranking, ["b"]) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranking, ["q"]) == 0.0
