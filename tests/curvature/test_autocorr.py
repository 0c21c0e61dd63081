"""Gradient covariance (TrackStar): H^-1/2 on both sides gives the damped H^-1 inner product,
query/corpus mixing gives lambda H_q + (1 - lambda) H_c with lambda fixed or chosen where the
weighted spectra cross, the pseudo-inverse matches torch.linalg.pinv, and a fit survives the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bergson_core import curvature as C
from bergson_core.curvature.strategies.autocorr import mixing_coefficient

from .tiny_setup import make_setup, rel_err


@pytest.fixture(scope="module")
def data():
    s = make_setup("llama", n_train=40, n_query=12, projection_dim=4)
    return s, s.grads(s.train), s.grads(s.query)


def cov(rows, b):
    x = torch.from_numpy(rows[:, b.offset : b.offset + b.width]).double()
    return x.T @ x / x.shape[0]


def test_inverse_square_root_on_both_sides(data):
    s, train, query = data
    fit = C.fit_preconditioner("autocorr", {"autocorr": C.autocorr_partial_stats(train, s.blocks, s.space)})
    half = C.ApplyOptions(damping=1e-2, damping_mode="absolute", power=-0.5)
    q, d = C.apply(fit, query, half), C.apply(fit, train, half)
    for b in s.blocks:
        h = cov(train, b) + 1e-2 * torch.eye(b.width, dtype=torch.float64)
        qb = torch.from_numpy(query[:, b.offset : b.offset + b.width])
        db = torch.from_numpy(train[:, b.offset : b.offset + b.width])
        want = qb @ torch.linalg.solve(h, db.T)  # q^T (H + d)^-1 d
        got = torch.from_numpy(q[:, b.offset : b.offset + b.width] @ d[:, b.offset : b.offset + b.width].T)
        assert rel_err(got, want) <= 1e-8


def test_mixing_fixed_and_from_spectra(data):
    s, train, query = data
    c = C.autocorr_partial_stats(train, s.blocks, s.space)
    q = C.autocorr_partial_stats(query, s.blocks, s.space, kind="autocorr-query")
    x = torch.randn(3, train.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times_h = C.ApplyOptions(damping=0.0, damping_mode="absolute", power=1.0)  # applies H itself
    fixed = C.fit_preconditioner("autocorr", {"autocorr": c, "autocorr-query": q}, C.FitOptions(mix_lambda=0.3))
    got = C.apply(fixed, x, times_h)
    for b in s.blocks:
        h = 0.3 * cov(query, b) + 0.7 * cov(train, b)
        assert rel_err(got[:, b.offset : b.offset + b.width], x[:, b.offset : b.offset + b.width] @ h) <= 1e-10
    for k in (5, 20):
        auto = C.fit_preconditioner("autocorr", {"autocorr": c, "autocorr-query": q},
                                    C.FitOptions(target_downweight_components=k))
        lam = auto.meta["mix_lambda"]
        assert 0.0 < lam < 1.0 and lam == mixing_coefficient(q, c, s.blocks, k)
        e_q = torch.cat([torch.linalg.eigvalsh(cov(query, b)) for b in s.blocks]).sort(descending=True).values
        e_c = torch.cat([torch.linalg.eigvalsh(cov(train, b)) for b in s.blocks]).sort(descending=True).values
        # the weighted curves cross at component k: above it the query dominates, below the corpus
        assert abs(lam * e_q[k - 1] - (1 - lam) * e_c[k - 1]) <= 1e-9 * e_c[k - 1]


def test_pseudo_inverse_matches_pinv(data):
    s, train, _ = data
    few = train[:5]  # rank 5 < 16: H is singular
    fit = C.fit_preconditioner("autocorr", {"autocorr": C.autocorr_partial_stats(few, s.blocks, s.space)})
    out = C.apply(fit, train, C.ApplyOptions(pseudo_inverse=True, pinv_rtol=1e-9))
    for b in s.blocks:
        want = torch.from_numpy(train[:, b.offset : b.offset + b.width]) @ torch.linalg.pinv(cov(few, b), rtol=1e-9)
        assert rel_err(out[:, b.offset : b.offset + b.width], want) <= 1e-6


@pytest.mark.parametrize("strategy", ["diagonal", "kfac", "ekfac", "autocorr"])
def test_fit_round_trips_through_the_store(data, strategy, tmp_path):
    s, train, query = data
    stats = {"autocorr": C.autocorr_partial_stats(train, s.blocks, s.space),
             "diagonal": C.rows_diagonal_partial_stats(train, s.blocks, s.space)}
    kfac = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space)})
    stats["ekfac-lambda"] = C.rows_lambda_partial_stats(train, kfac)
    fit = kfac if strategy == "kfac" else C.fit_preconditioner(strategy, stats, base=kfac)
    C.save_preconditioner(tmp_path, strategy, fit)
    back = C.load_preconditioner(tmp_path, strategy, space=s.space)
    assert back.fingerprint() == fit.fingerprint() and back.meta == fit.meta
    assert np.array_equal(C.apply(back, query), C.apply(fit, query))
