"""The two front doors of the strategies registered in strategy.STRATEGIES: `fit_preconditioner` (reduced statistics -> Fit) and `apply_preconditioner` (Fit, rows ->
preconditioned rows)."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..errors import ConfigError, UserError
from . import strategies  # noqa: F401  (imports every strategy module, which registers it)
from .options import ApplyOptions, FitOptions
from .space import Block, Space, block_view, row_width
from .stats import StatisticError, Stats
from .strategy import STRATEGIES, Fit, Strategy, layout_of  # noqa: F401  (re-exported)


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown preconditioner {name!r}: choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def fit_preconditioner(
    name: str,
    stats: dict[str, Stats],
    opts: FitOptions | None = None,
    base: Fit | None = None,
    layout: tuple[Space, list[Block]] | None = None,
) -> Fit:
    """Fit strategy `name` from reduced statistics keyed by kind (e.g. {"kfac": total}); `base`
    is the KFAC fit EK-FAC builds on; `layout` (space, blocks) is only needed by "identity".

    Refuses missing or non-finite statistics and statistics from different spaces."""
    strategy = get_strategy(name)
    missing = [k for k in strategy.needs if k not in stats]
    if missing:
        raise ConfigError(f"preconditioner {name} needs {', '.join(missing)} statistics: compute them first")
    if strategy.needs_base and (base is None or base.strategy != strategy.needs_base):
        raise ConfigError(f"preconditioner {name} needs a fitted {strategy.needs_base} preconditioner as its base")
    spaces = set()
    for kind, s in stats.items():
        s.check_finite()
        for c, n in s.counts.items():
            if n <= 0:
                raise StatisticError(f"{kind} statistics count no {c}: the shards had no documents with loss")
        spaces.add(json.dumps(s.meta.get("space"), sort_keys=True))
    if len(spaces) > 1:
        raise StatisticError(f"statistics for {name} come from different gradient spaces: recompute them alike")
    fit = strategy.fit(stats, opts or FitOptions(), base, layout)
    for k, t in fit.tensors.items():
        if not torch.isfinite(t).all():
            raise StatisticError(f"fitting {name} gave non-finite factor {k}: check the statistics")
    return fit


def apply_preconditioner(fit: Fit, grads, opts: ApplyOptions | None = None, space: Space | None = None):
    """Precondition gradient rows [N, D] laid out as `fit.blocks` (numpy or torch; same type and
    dtype back). With `space`, first check that the rows come from the fit's space."""
    opts = opts or ApplyOptions()
    if space is not None:
        fit.space.check(space, f"preconditioner {fit.strategy}")
    as_numpy = isinstance(grads, np.ndarray)
    x = torch.from_numpy(np.array(grads, dtype=np.float64)) if as_numpy else grads  # a copy: rows may be read-only
    if x.ndim != 2 or x.shape[1] != row_width(fit.blocks):
        raise UserError(
            f"gradients have shape {tuple(x.shape)} but preconditioner {fit.strategy} expects rows of "
            f"{row_width(fit.blocks)} numbers ({fit.space.describe()}): use gradients of the same index/spec"
        )
    strategy = get_strategy(fit.strategy)
    x64 = x.to(torch.float64)
    out = torch.empty_like(x64)
    for b in fit.blocks:
        res = strategy.apply_block(fit, b, block_view(x64, b), opts)  # [N, O', I']
        if not torch.isfinite(res).all():
            raise UserError(
                f"preconditioner {fit.strategy} gave non-finite values for module {b.name}: raise the damping"
            )
        out[:, b.offset : b.offset + b.width] = res.reshape(res.shape[0], -1)
    return out.numpy().astype(grads.dtype, copy=False) if as_numpy else out.to(x.dtype)
