"""Per-shard partial statistics: the map step of every curvature fit.

Model passes (need the model, run over a shard of documents):
  kfac_partial_stats    A = sum_t a_t a_t^T, S = sum_t g_t g_t^T per module, token count
                        (Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
                        approximate curvature")
  lambda_partial_stats  L[o,i] = sum_n (Q_S^T G_n Q_A)[o,i]^2 in a fitted KFAC eigenbasis, document
                        count (George et al. 2018, "Fast approximate natural gradient descent in a
                        Kronecker-factored eigenbasis", the EK-FAC eigenvalue correction)
  diagonal_partial_stats  D[o,i] = sum_n G_n[o,i]^2, document count
Row passes (need only stored gradient rows [N, D] of an index, no model):
  rows_lambda_partial_stats, rows_diagonal_partial_stats: the same sums from stored rows
  autocorr_partial_stats  H = sum_n vec(G_n) vec(G_n)^T per module (TrackStar, Chang et al. 2024)
Each returns a `Stats`; `reduce_stats` adds partials of the same kind and settings. A strategy may
also keep its passes in its own file (strategies/shampoo.py does), built from the helpers here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data.corpus import Doc
from ..model.modules import ModuleInfo
from .hooks import hooked_pass
from .space import Block, Space, block_view, layout
from .stats import Stats, key
from .strategy import Fit

DOC_CHUNK_BYTES = 32 << 20  # per-document temporaries of a statistic pass, per module and step


def _pass_meta(space: Space, blocks: list[Block], fisher: str, seed: int, loss_reduction: str) -> dict:
    meta = {"space": space.to_json(), "blocks": [b.to_json() for b in blocks], "fisher": fisher,
            "loss_reduction": loss_reduction}
    if fisher == "true":
        meta["seed"] = seed
    return meta


def _zeros(shape, loaded=None) -> torch.Tensor:
    """A float64 accumulator on the model's device (sums stay there until the pass ends)."""
    device = next(loaded.model.parameters()).device if loaded is not None else "cpu"
    return torch.zeros(shape, dtype=torch.float64, device=device)


def _to_cpu(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in sums.items()}


def kfac_partial_stats(
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
    """KFAC factor sums over the tokens of `docs`: A [I', I'] and S [O', O'] per module."""
    blocks = {b.name: b for b in layout(modules, space)}
    sums = {}
    for b in blocks.values():
        sums[key(b.name, "A")] = _zeros((b.cols, b.cols), loaded)
        sums[key(b.name, "S")] = _zeros((b.rows, b.rows), loaded)

    def on_module(info, a, g, mask):
        a2 = a.reshape(-1, a.shape[-1])  # [B*T, I']
        g2 = g.reshape(-1, g.shape[-1])  # [B*T, O']
        sums[key(info.name, "A")] += (a2.T @ a2).to(torch.float64)
        sums[key(info.name, "S")] += (g2.T @ g2).to(torch.float64)

    counts = hooked_pass(loaded, modules, docs, space, on_module, batch_tokens=batch_tokens,
                         loss_reduction=loss_reduction, fisher=fisher, seed=seed, on_batch=on_batch)
    return Stats("kfac", _to_cpu(sums), counts, _pass_meta(space, list(blocks.values()), fisher, seed, loss_reduction))


def lambda_partial_stats(
    loaded,
    modules: list[ModuleInfo],
    docs: list[Doc],
    basis: Fit,
    *,
    fisher: str = "empirical",
    seed: int = 0,
    loss_reduction: str = "sum",
    batch_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Stats:
    """EK-FAC eigenvalue-correction sums L = sum_n (Q_S^T G_n Q_A)^2 in `basis` (a KFAC fit)."""
    space = basis.space
    blocks = {b.name: b for b in basis.blocks}
    sums = {key(b.name, "L"): _zeros((b.rows, b.cols), loaded) for b in blocks.values()}
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_module(info, a, g, mask):
        if info.name not in cache:
            cache[info.name] = (basis.tensor(info.name, "Q_A").to(a.device, a.dtype),
                                basis.tensor(info.name, "Q_S").to(a.device, a.dtype))
        q_a, q_s = cache[info.name]
        gs, aq = g @ q_s, a @ q_a  # [B, T, O'], [B, T, I']
        acc = sums[key(info.name, "L")]
        # [b, O', I'] per-document rotated gradients, a bounded number of documents at a time: a
        # token budget alone lets a batch of short documents hold thousands of them
        step = max(1, DOC_CHUNK_BYTES // (gs.shape[-1] * aq.shape[-1] * gs.element_size()))
        for lo in range(0, gs.shape[0], step):
            rotated = torch.einsum("bto,bti->boi", gs[lo : lo + step], aq[lo : lo + step])  # Q_S^T G_n Q_A
            acc += rotated.square().sum(0).to(torch.float64)

    counts = hooked_pass(loaded, [m for m in modules if m.name in blocks], docs, space, on_module,
                         batch_tokens=batch_tokens, loss_reduction=loss_reduction, fisher=fisher,
                         seed=seed, on_batch=on_batch)
    meta = _pass_meta(space, basis.blocks, fisher, seed, loss_reduction)
    meta["basis"] = basis.fingerprint()
    return Stats("ekfac-lambda", _to_cpu(sums), {"documents": counts["documents"]}, meta)


def diagonal_partial_stats(
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
    """Diagonal Fisher sums D = sum_n G_n^2 (elementwise) per module."""
    blocks = layout(modules, space)
    sums = {key(b.name, "D"): _zeros((b.rows, b.cols), loaded) for b in blocks}

    def on_module(info, a, g, mask):
        grad = torch.einsum("bto,bti->boi", g, a)  # [B, O', I']
        sums[key(info.name, "D")] += grad.square().sum(0).to(torch.float64)

    counts = hooked_pass(loaded, modules, docs, space, on_module, batch_tokens=batch_tokens,
                         loss_reduction=loss_reduction, fisher=fisher, seed=seed, on_batch=on_batch)
    return Stats("diagonal", _to_cpu(sums), {"documents": counts["documents"]},
                 _pass_meta(space, blocks, fisher, seed, loss_reduction))


# -- from stored gradient rows ------------------------------------------------------------------
def _rows(rows) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        return rows.to(torch.float64)  # [N, D]
    return torch.from_numpy(np.array(rows, dtype=np.float64))  # a writable float64 copy of mapped rows


def _rows_meta(space: Space, blocks: list[Block], **extra) -> dict:
    return {"space": space.to_json(), "blocks": [b.to_json() for b in blocks], "source": "rows", **extra}


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm over the whole row (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-300)


def rows_lambda_partial_stats(rows, basis: Fit) -> Stats:
    """EK-FAC eigenvalue-correction sums from stored per-document gradient rows in basis.space."""
    x = _rows(rows)
    sums = {}
    for b in basis.blocks:
        g = block_view(x, b)  # [N, O', I']
        q_a, q_s = basis.tensor(b.name, "Q_A"), basis.tensor(b.name, "Q_S")
        sums[key(b.name, "L")] = (q_s.T @ g @ q_a).square().sum(0)  # [O', I']
    meta = _rows_meta(basis.space, basis.blocks, basis=basis.fingerprint())
    return Stats("ekfac-lambda", sums, {"documents": x.shape[0]}, meta)


def rows_diagonal_partial_stats(rows, blocks: list[Block], space: Space) -> Stats:
    """Diagonal Fisher sums D = sum_n G_n^2 from stored rows."""
    x = _rows(rows)
    sums = {key(b.name, "D"): block_view(x, b).square().sum(0) for b in blocks}
    return Stats("diagonal", sums, {"documents": x.shape[0]}, _rows_meta(space, blocks))


def autocorr_partial_stats(rows, blocks: list[Block], space: Space, unit_normalize: bool = False,
                           kind: str = "autocorr") -> Stats:
    """Gradient second-moment sums H = sum_n vec(G_n) vec(G_n)^T per module, from stored rows
    (normally projected, Adam-normalised rows of an index). `kind` separates the corpus ("autocorr")
    from the query set ("autocorr-query") for TrackStar's mixing."""
    x = _rows(rows)
    if unit_normalize:
        x = unit_rows(x)
    sums = {}
    for b in blocks:
        v = x[:, b.offset : b.offset + b.width]  # [N, w]
        sums[key(b.name, "H")] = v.T @ v  # [w, w]
    meta = _rows_meta(space, blocks, unit_normalize=unit_normalize)
    return Stats(kind, sums, {"documents": x.shape[0]}, meta)
