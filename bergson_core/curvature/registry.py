"""The two front doors of the strategies registered in strategy.STRATEGIES: `fit_preconditioner` (reduced statistics -> Fit) and `apply_preconditioner` (Fit, rows ->
preconditioned rows)."""

from __future__ import annotations

import json
import warnings

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


def apply_preconditioner(fit: Fit, grads, opts: ApplyOptions | None = None, space: Space | None = None,
                         dtype: torch.dtype = torch.float64):
    """Precondition gradient rows [N, D] laid out as `fit.blocks` (numpy or torch; same type and
    dtype back). With `space`, first check that the rows come from the fit's space. `dtype` is the
    precision of the rotations: float64 (the default), or float32 for strategies that allow it
    (`float32_apply`, KFAC and EK-FAC: kronfluence's precision, twice as fast); spectra are
    always damped and inverted in float64."""
    opts = opts or ApplyOptions()
    if space is not None:
        fit.space.check(space, f"preconditioner {fit.strategy}")
    strategy = get_strategy(fit.strategy)
    if not getattr(strategy, "float32_apply", False):
        dtype = torch.float64
    as_numpy = isinstance(grads, np.ndarray)
    if as_numpy:
        with warnings.catch_warnings():  # read-only rows are only read
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.asarray(grads, dtype=np.float64 if dtype == torch.float64 else np.float32))
    else:
        x = grads
    if x.ndim != 2 or x.shape[1] != row_width(fit.blocks):
        raise UserError(
            f"gradients have shape {tuple(x.shape)} but preconditioner {fit.strategy} expects rows of "
            f"{row_width(fit.blocks)} numbers ({fit.space.describe()}): use gradients of the same index/spec"
        )
    if dtype != torch.float64:
        fit = Fit(fit.strategy, fit.space, fit.blocks, {k: (t.to(dtype) if t.is_floating_point() else t)
                                                        for k, t in fit.tensors.items()}, fit.meta)
    xd = x.to(dtype)
    out = torch.empty_like(xd)
    for b in fit.blocks:
        res = strategy.apply_block(fit, b, block_view(xd, b), opts)  # [N, O', I']
        if not torch.isfinite(res).all():
            raise UserError(
                f"preconditioner {fit.strategy} gave non-finite values for module {b.name}: raise the damping"
            )
        out[:, b.offset : b.offset + b.width] = res.reshape(res.shape[0], -1)
    return out.numpy().astype(grads.dtype, copy=False) if as_numpy else out.to(x.dtype)
