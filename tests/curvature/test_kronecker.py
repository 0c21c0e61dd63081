"""EK-FAC eigenvalues against the explicit per-module Fisher, and factored preconditioners against
their explicit Kronecker-structured matrices, on a model small enough to form them.

Row-major vec: vec(Q_S^T G Q_A) = (Q_S (x) Q_A)^T vec(G), so with K = Q_S (x) Q_A the corrected
eigenvalues are diag(K^T F K) for F = mean_n vec(G_n) vec(G_n)^T (George et al. 2018).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bergson_core import curvature as C
from bergson_core.curvature.space import block_view

from .tiny_setup import make_setup, rel_err


@pytest.fixture(scope="module")
def fitted():
    s = make_setup("gpt2", n_train=12, n_query=2, hidden=8, layers=1)
    kfac_stats = C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space)
    kfac = C.fit_preconditioner("kfac", {"kfac": kfac_stats})
    ekfac = C.fit_preconditioner("ekfac", {"ekfac-lambda": C.lambda_partial_stats(s.loaded, s.modules, s.train, kfac)},
                                 base=kfac)
    rows = torch.from_numpy(s.grads(s.train))  # [N, D], from the core capture hooks
    return s, kfac_stats, kfac, ekfac, rows


def kron_basis(fit, name):
    return torch.kron(fit.tensor(name, "Q_S"), fit.tensor(name, "Q_A"))  # [O*I, O*I]


def test_ekfac_eigenvalues_equal_direct_fisher(fitted):
    s, _, kfac, ekfac, rows = fitted
    for b in ekfac.blocks:
        g = rows[:, b.offset : b.offset + b.width]  # [N, O*I]
        fisher = g.T @ g / g.shape[0]  # full per-module empirical Fisher
        k = kron_basis(kfac, b.name)
        direct = torch.diagonal(k.T @ fisher @ k).reshape(b.rows, b.cols)
        assert rel_err(ekfac.tensor(b.name, "Lambda"), direct) <= 1e-10, b.name
        # the corrected eigenvalues are the best diagonal in this basis: any change fits F worse
        best = torch.linalg.norm(fisher - k @ torch.diag(direct.flatten()) @ k.T)
        kfac_lam = torch.outer(kfac.tensor(b.name, "e_S"), kfac.tensor(b.name, "e_A")).flatten()
        assert best <= torch.linalg.norm(fisher - k @ torch.diag(kfac_lam) @ k.T)
    # the same eigenvalues from stored rows, without the model
    from_rows = C.fit_preconditioner("ekfac", {"ekfac-lambda": C.rows_lambda_partial_stats(rows.numpy(), kfac)}, base=kfac)
    for key, t in ekfac.tensors.items():
        assert rel_err(from_rows.tensors[key], t) <= 1e-10


def test_kfac_curvature_is_kronecker_product_of_factors(fitted):
    s, stats, kfac, _, _ = fitted
    n = stats.counts["tokens"]
    for b in kfac.blocks:
        k = kron_basis(kfac, b.name)
        lam = torch.outer(kfac.tensor(b.name, "e_S"), kfac.tensor(b.name, "e_A")).flatten()
        explicit = torch.kron(stats.tensor(b.name, "S") / n, stats.tensor(b.name, "A") / n)  # S (x) A
        assert rel_err(k @ torch.diag(lam) @ k.T, explicit) <= 1e-10


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
@pytest.mark.parametrize("mode,damping,power", [("absolute", 1e-3, -1.0), ("relative", 0.1, -1.0), ("relative", 0.1, -0.5)])
def test_factored_apply_equals_explicit_matrix(fitted, strategy, mode, damping, power):
    s, _, kfac, ekfac, rows = fitted
    fit = {"kfac": kfac, "ekfac": ekfac}[strategy]
    opts = C.ApplyOptions(damping=damping, damping_mode=mode, power=power)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, rows.shape[1], generator=gen, dtype=torch.float64)
    out = C.apply(fit, x, opts)
    for b in fit.blocks:
        k = kron_basis(kfac, b.name)
        lam = (fit.tensor(b.name, "Lambda") if strategy == "ekfac" else
               torch.outer(fit.tensor(b.name, "e_S"), fit.tensor(b.name, "e_A"))).flatten()
        d = damping if mode == "absolute" else damping * float(lam.mean())
        lam_c = lam.clamp(min=0) if power != -1.0 else lam
        explicit = k @ torch.diag((lam_c + d) ** power) @ k.T  # (Q_S (x) Q_A) diag(.) (Q_S (x) Q_A)^T
        got = block_view(out, b).reshape(3, -1)
        want = x[:, b.offset : b.offset + b.width] @ explicit.T
        assert rel_err(got, want) <= 1e-10, b.name
        if power == -1.0:  # and it really inverts the damped curvature
            damped = k @ torch.diag(lam + d) @ k.T
            back = got @ damped.T
            assert rel_err(back, x[:, b.offset : b.offset + b.width]) <= 1e-8


def test_numpy_in_numpy_out_and_dtype_kept(fitted):
    s, _, kfac, _, rows = fitted
    x = rows.numpy().astype(np.float32)
    out = C.apply(kfac, x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape


def test_shampoo_inverts_its_factors(fitted):
    """Undamped, power -2 gives L^-1 G R^-1, so L P(G) R = G (checked with plain matmuls) wherever
    both factors are invertible; the pseudo-inverse keeps singular modules finite."""
    s, _, _, _, rows = fitted
    # random rows: real LayerNorm-fed gradients have structurally singular factors
    rand = torch.randn(40, rows.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stats = C.rows_shampoo_partial_stats(rand, s.blocks, s.space)
    fit = C.fit_preconditioner("shampoo", {"shampoo": stats})
    x = torch.randn(2, rows.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = C.apply(fit, x, C.ApplyOptions(power=-2.0, pseudo_inverse=True, pinv_rtol=1e-14))
    checked = 0
    n = stats.counts["documents"]
    for b in fit.blocks:
        left, right = stats.tensor(b.name, "L") / n, stats.tensor(b.name, "R") / n
        if torch.linalg.matrix_rank(left) < b.rows or torch.linalg.matrix_rank(right) < b.cols:
            continue  # singular factor: no exact inverse to check
        assert rel_err(left @ block_view(out, b) @ right, block_view(x, b)) <= 1e-6, b.name
        checked += 1
    assert checked == len(fit.blocks)


def test_projecting_full_rows_gives_index_rows():
    """project_rows(full gradients) equals gradients captured with the projection folded into the
    hooks, so a query preconditioned in the full space can be scored against a projected index."""
    full = make_setup("llama", n_train=5, n_query=1)
    proj = make_setup("llama", n_train=5, n_query=1, projection_dim=4)
    got = C.project_rows(full.grads(full.train), full.modules, proj.space)
    assert rel_err(got, proj.grads(proj.train)) <= 1e-10
