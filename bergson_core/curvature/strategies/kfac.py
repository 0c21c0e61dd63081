"""KFAC: F ~ A (x) S per module, with A = E[a a^T] and S = E[g g^T] over tokens (Martens & Grosse
2015). In the eigenbases A = Q_A diag(e_A) Q_A^T, S = Q_S diag(e_S) Q_S^T, the damped inverse is

    P(G) = Q_S [ (Q_S^T G Q_A) * (Lambda + d)^power ] Q_A^T,   Lambda[o, i] = e_S[o] e_A[i].

Both factors are averaged over the same token count, as kronfluence does; eigendecompositions
run in float64.
"""

from __future__ import annotations

import torch

from ..linalg import spectral_scale, sym_eigh
from ..passes import kfac_partial_stats
from ..stats import key
from ..strategy import Fit, Strategy, layout_of


def eigen_precondition(g: torch.Tensor, q_s: torch.Tensor, q_a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q_S [ (Q_S^T G Q_A) * scale ] Q_A^T for g [N, O, I]."""
    rotated = q_s.T @ g @ q_a  # [N, O, I]
    return q_s @ (rotated * scale.to(rotated.dtype)) @ q_a.T


class Kfac(Strategy):
    name = "kfac"
    needs = ("kfac",)
    float32_apply = True  # rotations in float32 when asked (registry.apply_preconditioner)
    help = "KFAC: Kronecker factors of activation and output-gradient covariances."

    def fit(self, stats, opts, base, layout) -> Fit:
        s = stats["kfac"]
        space, blocks = layout_of(s)
        n = s.counts["tokens"]
        tensors = {}
        for b in blocks:
            e_a, q_a = sym_eigh(s.tensor(b.name, "A") / n)  # [I'], [I', I']
            e_s, q_s = sym_eigh(s.tensor(b.name, "S") / n)  # [O'], [O', O']
            tensors.update({key(b.name, "Q_A"): q_a, key(b.name, "e_A"): e_a,
                            key(b.name, "Q_S"): q_s, key(b.name, "e_S"): e_s})
        meta = {"tokens": n, "documents": s.counts.get("documents"), "fisher": s.meta.get("fisher")}
        return Fit(self.name, space, blocks, tensors, meta)

    def eigenvalues(self, fit: Fit, name: str) -> torch.Tensor:
        return torch.outer(fit.tensor(name, "e_S"), fit.tensor(name, "e_A"))  # [O', I']

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        scale = spectral_scale(self.eigenvalues(fit, block.name), opts)
        return eigen_precondition(g, fit.tensor(block.name, "Q_S"), fit.tensor(block.name, "Q_A"), scale)

    def model_stats(self, loaded, modules, docs, space, **kw):
        return kfac_partial_stats(loaded, modules, docs, space, **kw)
