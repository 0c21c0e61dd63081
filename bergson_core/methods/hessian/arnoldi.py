"""Arnoldi influence (Schioppa, Zablotskaia, Vilar & Sokolov 2022, "Scaling up influence functions"):
the top-r eigenpairs of the curvature from an n-step Arnoldi iteration with curvature-vector
products, then influence in that subspace,

    (H + lambda I)^-1 v  ~  sum_k u_k (u_k^T v) / (lambda_k + lambda),   k = 1..r.

Arnoldi builds an orthonormal Krylov basis Q_n of span{v0, H v0, ..., H^{n-1} v0} (modified
Gram-Schmidt, with a second orthogonalisation pass) and the Hessenberg matrix H_n = Q_n^T H Q_n;
the Ritz pairs (eigenpairs of H_n mapped back by Q_n) approximate the extreme eigenpairs of H. The
curvature is symmetric, so H_n is symmetrised before its eigendecomposition.
"""

from __future__ import annotations

from typing import Callable

import torch


def arnoldi(product: Callable[[torch.Tensor], torch.Tensor], width: int, iterations: int, rank: int,
            dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [r], eigenvectors [r, P]) of the r largest-magnitude Ritz pairs, from `iterations` products."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(width, generator=gen, dtype=dtype)
    basis = [q / q.norm()]
    hess = torch.zeros(iterations + 1, iterations, dtype=dtype)
    for j in range(iterations):
        w = product(basis[j][None])[0]  # [P]
        for _ in range(2):  # Gram-Schmidt twice: orthogonality to machine precision
            for i, b in enumerate(basis):
                c = b @ w
                hess[i, j] += c
                w = w - c * b
        hess[j + 1, j] = w.norm()
        if hess[j + 1, j] <= 1e-12 * hess[: j + 1, j].abs().max():  # an invariant subspace: exact pairs
            iterations = j + 1
            break
        basis.append(w / hess[j + 1, j])
    small = hess[:iterations, :iterations]
    eig, vec = torch.linalg.eigh(0.5 * (small + small.T))
    top = eig.abs().argsort(descending=True)[:rank]
    q_n = torch.stack(basis[:iterations], dim=1)  # [P, n]
    return eig[top], (q_n @ vec[:, top]).T


def subspace_inverse(v: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                     damping: float = 0.0) -> torch.Tensor:
    """sum_k u_k (u_k^T v) / (lambda_k + damping) for V [K, P]."""
    return ((v @ eigenvectors.T) / (eigenvalues + damping)) @ eigenvectors
