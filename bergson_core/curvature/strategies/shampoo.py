"""Shampoo-style factors (Gupta et al. 2018, "Shampoo: preconditioned stochastic tensor
optimization"): per module L = mean_n G_n G_n^T [O', O'] and R = mean_n G_n^T G_n [I', I'] from
per-document gradients, and the curvature H = L^1/2 (x) R^1/2. In the eigenbases of L and R,
H has eigenvalues Lambda[o, i] = sqrt(e_L[o] e_R[i]), so applying is KFAC's rotate / scale /
rotate back: with no damping and power -1, P(G) = L^-1/2 G R^-1/2 (Shampoo's update direction
for power -1/2 is L^-1/4 G R^-1/4).
"""

from __future__ import annotations

import torch

from ..linalg import spectral_scale, sym_eigh
from ..registry import Fit, Strategy, layout_of
from ..stats import key
from .kfac import eigen_precondition


class Shampoo(Strategy):
    name = "shampoo"
    needs = ("shampoo",)
    help = "Shampoo: L = E[G G^T], R = E[G^T G] per module, curvature L^1/2 (x) R^1/2."

    def fit(self, stats, opts, base, layout) -> Fit:
        s = stats["shampoo"]
        space, blocks = layout_of(s)
        n = s.counts["documents"]
        tensors = {}
        for b in blocks:
            e_l, q_l = sym_eigh(s.tensor(b.name, "L") / n)  # [O'], [O', O']
            e_r, q_r = sym_eigh(s.tensor(b.name, "R") / n)  # [I'], [I', I']
            tensors.update({key(b.name, "Q_L"): q_l, key(b.name, "e_L"): e_l,
                            key(b.name, "Q_R"): q_r, key(b.name, "e_R"): e_r})
        return Fit(self.name, space, blocks, tensors, {"documents": n, "fisher": s.meta.get("fisher")})

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        e_l, e_r = fit.tensor(block.name, "e_L").clamp(min=0), fit.tensor(block.name, "e_R").clamp(min=0)
        lam = torch.outer(e_l.sqrt(), e_r.sqrt())  # [O', I'] eigenvalues of L^1/2 (x) R^1/2
        return eigen_precondition(g, fit.tensor(block.name, "Q_L"), fit.tensor(block.name, "Q_R"),
                                  spectral_scale(lam, opts))
