"""Shampoo-style factors (Gupta et al. 2018, "Shampoo: preconditioned stochastic tensor
optimization"): per module L = mean_n G_n G_n^T [O', O'] and R = mean_n G_n^T G_n [I', I'] from
per-document gradients, and the curvature H = L^1/2 (x) R^1/2. In the eigenbases of L and R,
H has eigenvalues Lambda[o, i] = sqrt(e_L[o] e_R[i]), so applying is KFAC's rotate / scale /
rotate back: with no damping and power -1, P(G) = L^-1/2 G R^-1/2 (Shampoo's update direction
for power -1/2 is L^-1/4 G R^-1/4).
"""

from __future__ import annotations

from typing import Callable

import torch

from ...data.corpus import Doc
from ...model.modules import ModuleInfo
from ..hooks import hooked_pass
from ..linalg import spectral_scale, sym_eigh
from ..passes import _pass_meta, _rows, _rows_meta, _to_cpu, _zeros
from ..space import Block, Space, block_view, layout
from ..stats import Stats, key
from ..strategy import Fit, Strategy, layout_of
from .kfac import eigen_precondition


def shampoo_partial_stats(
    loaded,
    modules: list[ModuleInfo],
    docs: list[Doc],
    space: Space,
    *,
    fisher: str = "empirical",
    seed: int = 0,
    loss_reduction: str = "sum",
    batch_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Stats:
    """Shampoo factor sums L = sum_n G_n G_n^T [O', O'] and R = sum_n G_n^T G_n [I', I'] per module."""
    blocks = layout(modules, space)
    sums = {}
    for b in blocks:
        sums[key(b.name, "L")] = _zeros((b.rows, b.rows), loaded)
        sums[key(b.name, "R")] = _zeros((b.cols, b.cols), loaded)

    def on_module(info, a, g, mask):
        grad = torch.einsum("bto,bti->boi", g, a)  # [B, O', I']
        sums[key(info.name, "L")] += torch.einsum("boi,bpi->op", grad, grad).to(torch.float64)
        sums[key(info.name, "R")] += torch.einsum("boi,boj->ij", grad, grad).to(torch.float64)

    counts = hooked_pass(loaded, modules, docs, space, on_module, batch_tokens=batch_tokens,
                         loss_reduction=loss_reduction, fisher=fisher, seed=seed, on_batch=on_batch)
    return Stats("shampoo", _to_cpu(sums), {"documents": counts["documents"]},
                 _pass_meta(space, blocks, fisher, seed, loss_reduction))


def rows_shampoo_partial_stats(rows, blocks: list[Block], space: Space) -> Stats:
    """Shampoo factor sums L = sum_n G_n G_n^T and R = sum_n G_n^T G_n from stored rows."""
    x = _rows(rows)
    sums = {}
    for b in blocks:
        g = block_view(x, b)  # [N, O', I']
        sums[key(b.name, "L")] = torch.einsum("noi,npi->op", g, g)
        sums[key(b.name, "R")] = torch.einsum("noi,noj->ij", g, g)
    return Stats("shampoo", sums, {"documents": x.shape[0]}, _rows_meta(space, blocks))


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

    def model_stats(self, loaded, modules, docs, space, **kw) -> Stats:
        return shampoo_partial_stats(loaded, modules, docs, space, **kw)

    def rows_stats(self, rows, blocks, space, **kw) -> Stats:
        return rows_shampoo_partial_stats(rows, blocks, space)
