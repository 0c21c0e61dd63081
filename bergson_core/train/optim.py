"""The optimisers as pure tensor functions: the single copy used by the trainer (train/trainer.py)
and differentiated through by MAGIC (methods/magic/metagrad.py), so MAGIC always differentiates the
very run that `validate` retrains.

Each update maps (p, g, state, 1-based step, lr, opts) to (new p, new state), out of place and
differentiable in p, g and the state.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from ..config.eval import TrainOptions
from .muon import MATRIX_STATE, hidden_matrices, muon_update


def safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt(v) for v >= 0 with derivative 0 (not inf) at v = 0; twice differentiable elsewhere.
    Same forward values as torch.sqrt."""
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def adamw_update(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], step: int, lr: float,
                 opts: TrainOptions, sqrt: Callable[[torch.Tensor], torch.Tensor] = torch.sqrt,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One AdamW step (Loshchilov & Hutter 2019) with torch.optim.AdamW's exact formula; `step` is
    1-based. `sqrt=safe_sqrt` gives the same values with a finite derivative at v = 0 (MAGIC)."""
    m = opts.beta1 * state["exp_avg"] + (1 - opts.beta1) * g
    v = opts.beta2 * state["exp_avg_sq"] + (1 - opts.beta2) * g * g
    bc1 = 1 - opts.beta1 ** step
    bc2 = 1 - opts.beta2 ** step
    denom = sqrt(v) / math.sqrt(bc2) + opts.eps
    p = p * (1 - lr * opts.weight_decay) - (lr / bc1) * m / denom
    return p, {"exp_avg": m, "exp_avg_sq": v}


def sgd_update(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], step: int, lr: float,
               opts: TrainOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One SGD step as torch.optim.SGD (L2 weight decay, heavy-ball momentum, no dampening)."""
    d = g + opts.weight_decay * p if opts.weight_decay else g
    if opts.momentum:
        d = d if step == 1 else opts.momentum * state["momentum_buffer"] + d
        state = {"momentum_buffer": d}
    return p - lr * d, state


_SAFE_ADAMW = functools.partial(adamw_update, sqrt=safe_sqrt)
UPDATES = {"adamw": adamw_update, "sgd": sgd_update, "muon": functools.partial(muon_update, adam=adamw_update)}
# for reverse-mode through the steps: the same updates, AdamW with the safe square root
DIFFERENTIABLE_UPDATES = {"adamw": _SAFE_ADAMW, "sgd": sgd_update,
                          "muon": functools.partial(muon_update, adam=_SAFE_ADAMW)}


def init_state(p: torch.Tensor, opts: TrainOptions, matrix: bool = False) -> dict[str, torch.Tensor]:
    """A parameter's fresh optimizer state; `matrix`: a hidden weight matrix, which Muon orthogonalises."""
    if opts.optimizer == "muon" and matrix:
        return {MATRIX_STATE: torch.zeros_like(p)}
    if opts.optimizer in ("adamw", "muon"):
        return {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return {"momentum_buffer": torch.zeros_like(p)} if opts.momentum else {}


def init_states(model: torch.nn.Module, params: dict[str, torch.Tensor], opts: TrainOptions) -> dict[str, dict]:
    """Fresh optimizer states of `params` (names of `model`'s parameters)."""
    matrices = hidden_matrices(model) if opts.optimizer == "muon" else set()
    return {name: init_state(p, opts, name in matrices) for name, p in params.items()}
