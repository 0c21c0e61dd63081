"""EK-FAC: KFAC eigenbases with corrected eigenvalues (George et al. 2018),

    Lambda[o, i] = mean_n (Q_S^T G_n Q_A)[o, i]^2,

the diagonal of the per-document Fisher in the Kronecker eigenbasis, gathered by a second pass
over the corpus (`lambda_partial_stats` or `rows_lambda_partial_stats`). Applying is KFAC's
rotate / scale / rotate back with this Lambda. The fit reuses the exact eigenbasis the second pass
used (checked by fingerprint), never a recomputed one whose eigenvector signs might differ.
"""

from __future__ import annotations

import torch

from ..linalg import spectral_scale
from ..stats import StatisticError, key
from ..strategy import Fit, Strategy
from .kfac import eigen_precondition


class Ekfac(Strategy):
    name = "ekfac"
    needs = ("ekfac-lambda",)
    needs_base = "kfac"
    float32_apply = True  # rotations in float32 when asked (registry.apply_preconditioner)
    help = "EK-FAC: KFAC eigenbases with eigenvalues corrected by a pass over per-document gradients."

    def fit(self, stats, opts, base, layout) -> Fit:
        s = stats["ekfac-lambda"]
        if s.meta.get("basis") != base.fingerprint():
            raise StatisticError(
                "EK-FAC eigenvalue statistics were gathered in another KFAC eigenbasis: recompute them "
                "with the fitted kfac preconditioner"
            )
        n = s.counts["documents"]
        tensors = {}
        for b in base.blocks:
            tensors[key(b.name, "Q_A")] = base.tensor(b.name, "Q_A")
            tensors[key(b.name, "Q_S")] = base.tensor(b.name, "Q_S")
            tensors[key(b.name, "Lambda")] = s.tensor(b.name, "L") / n  # [O', I']
        meta = {"documents": n, "fisher": s.meta.get("fisher"), "basis": base.fingerprint()}
        return Fit(self.name, base.space, list(base.blocks), tensors, meta)

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        scale = spectral_scale(fit.tensor(block.name, "Lambda"), opts)
        return eigen_precondition(g, fit.tensor(block.name, "Q_S"), fit.tensor(block.name, "Q_A"), scale)
