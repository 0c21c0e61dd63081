"""Diagonal (empirical or true) Fisher: P(G) = G / (Lambda + d) elementwise, Lambda = mean_n G_n^2.

This is EK-FAC with identity eigenbases (kronfluence's "diagonal" strategy); in a projected space
it is the diagonal of the projected Fisher.
"""

from __future__ import annotations

import torch

from ..linalg import spectral_scale
from ..passes import diagonal_partial_stats, rows_diagonal_partial_stats
from ..stats import key
from ..strategy import Fit, Strategy, layout_of


class Diagonal(Strategy):
    name = "diagonal"
    needs = ("diagonal",)
    help = "Diagonal Fisher: elementwise mean squared per-document gradient."

    def fit(self, stats, opts, base, layout) -> Fit:
        s = stats["diagonal"]
        space, blocks = layout_of(s)
        n = s.counts["documents"]
        tensors = {key(b.name, "Lambda"): s.tensor(b.name, "D") / n for b in blocks}
        return Fit(self.name, space, blocks, tensors, {"documents": n, "fisher": s.meta.get("fisher")})

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        return g * spectral_scale(fit.tensor(block.name, "Lambda"), opts)  # [N, O', I']

    def model_stats(self, loaded, modules, docs, space, **kw):
        return diagonal_partial_stats(loaded, modules, docs, space, **kw)

    def rows_stats(self, rows, blocks, space, **kw):
        return rows_diagonal_partial_stats(rows, blocks, space)
