"""The maths of TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale"), one model at a time.

For a model with output function f, projected output gradients phi_i = P grad f_i(theta) (rows of
Phi, [N, D]) and the out-to-loss weights Q_i = -dL_i/df_i, TRAK attributes query q to document i by

    tau(q, i) = phi_q^T (Phi^T Phi + lambda I)^-1 phi_i Q_i,

the one-step Newton estimate of the change of f_q when i is removed (exact up to the leverage
factor for linear regression), and averages tau over an ensemble of models.

For a language model the project stores loss gradients g_i = grad L_i, L_i = -log p_i. With TRAK's
output function f_i = log(p_i / (1 - p_i)) (the "1 - p" correction for cross-entropy) one has
df/dL = -1 / (1 - p), so phi_i = -g_i / (1 - p_i) and Q_i = 1 - p_i, which gives

    tau(q, i) = g_q^T (Phi^T Phi + lambda I)^-1 g_i / (1 - p_q),   Phi rows g_i / (1 - p_i),

with the project's sign: positive when training on i lowers the query loss.
"""

from __future__ import annotations

import torch

from ...config.curvature import ApplyOptions, DampingOptions
from ...curvature.linalg import spectral_scale, sym_eigh


def one_minus_p(losses: torch.Tensor) -> torch.Tensor:
    """1 - p = 1 - exp(-L) per document [N] (float64), from losses L = -log p; computed as -expm1(-L)
    so a nearly memorised document keeps its digits. A document without loss tokens (L = 0) has a
    zero gradient, so its weight is irrelevant: it gets 1."""
    w = -torch.expm1(-losses.to(torch.float64))
    return torch.where(w > 0, w, torch.ones_like(w))


def output_gradients(loss_grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """phi = grad f = -g / (1 - p) [n, D] (float64) for f = log(p / (1 - p)), L = -log p."""
    return -loss_grads.to(torch.float64) / one_minus_p(losses)[:, None]


def kernel_update(gram: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """gram += Phi^T Phi for a block of output gradients phi [n, D]."""
    phi = phi.to(torch.float64)
    return gram.addmm_(phi.T, phi)


def inverse_kernel(gram: torch.Tensor, damping: DampingOptions) -> torch.Tensor:
    """(Phi^T Phi + lambda I)^-1 [D, D] in float64; lambda absolute or relative to the mean eigenvalue
    (or a pseudo-inverse), as for every curvature of the project."""
    eig, vec = sym_eigh(gram)
    scale = spectral_scale(eig, ApplyOptions(**damping.model_dump(), power=-1.0))  # [D]
    return (vec * scale) @ vec.T


def tau(phi_q: torch.Tensor, phi: torch.Tensor, out_to_loss: torch.Tensor, damping: DampingOptions) -> torch.Tensor:
    """TRAK's tau [Q, N] of one model, all in memory: phi_q [Q, D], phi [N, D], Q_i = out_to_loss [N]."""
    phi = phi.to(torch.float64)
    gram = kernel_update(torch.zeros(phi.shape[1], phi.shape[1], dtype=torch.float64), phi)
    return phi_q.to(torch.float64) @ inverse_kernel(gram, damping) @ (phi * out_to_loss.to(torch.float64)[:, None]).T


def lm_queries(query_grads: torch.Tensor, query_losses: torch.Tensor, inv_kernel: torch.Tensor) -> torch.Tensor:
    """u_q [Q, D] such that tau(q, i) = <u_q, g_i> for loss gradients g_i of a language model: with
    phi_i Q_i = -g_i, u_q = -(Phi^T Phi + lambda I)^-1 phi_q = K^-1 g_q / (1 - p_q)."""
    return -(output_gradients(query_grads, query_losses) @ inv_kernel)  # the inverse is symmetric


def lm_tau(query_grads: torch.Tensor, query_losses: torch.Tensor, grads: torch.Tensor, losses: torch.Tensor,
           damping: DampingOptions) -> torch.Tensor:
    """tau [Q, N] of one language model from loss gradients and losses (the streamed run's reference)."""
    return tau(output_gradients(query_grads, query_losses), output_gradients(grads, losses), one_minus_p(losses),
               damping)
