"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"), with the
update scale of Liu et al. 2025 ("Muon is scalable for LLM training") so that one learning rate and
weight decay serve both parameter groups:

    B_t = mu B_{t-1} + G_t                      (momentum; mu = --momentum)
    M_t = G_t + mu B_t                          (Nesterov)
    O_t = NewtonSchulz5(M_t)                    (~ U V^T of M_t = U S V^T: the orthogonalised update)
    W_t = W_{t-1} (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) O_t

for the weight matrices of the hidden linear layers; every other parameter (embeddings, the LM head,
biases, norms) takes the AdamW step. NewtonSchulz5 normalises X = M / (|M|_F + 1e-7), works on the
wide orientation (X X^T the smaller Gram matrix) and applies five times X <- a X + (b A + c A^2) X,
A = X X^T, (a, b, c) = (3.4445, -4.7750, 2.0315). A polynomial in M: differentiable, so MAGIC can
run through it. (The scale is symmetric in rows and cols, so Conv1D's transposed storage needs no care.)
"""

from __future__ import annotations

from typing import Callable

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
MATRIX_STATE = "momentum_buffer"  # the state key of a Muon matrix (others hold AdamW's)


def newton_schulz(m: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """The quintic Newton-Schulz iteration towards the orthogonal factor of m [r, c]."""
    a, b, c = NS_COEFFICIENTS
    x = m / (m.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T  # [r, r], r the smaller side
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def muon_update(p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], step: int, lr: float, opts,
                adam: Callable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One Muon step for a hidden weight matrix (its state holds MATRIX_STATE), else `adam`'s step."""
    if MATRIX_STATE not in state:
        return adam(p, g, state, step, lr, opts)
    buf = opts.momentum * state[MATRIX_STATE] + g
    update = newton_schulz(g + opts.momentum * buf)
    scale = 0.2 * max(p.shape) ** 0.5
    return p * (1 - lr * opts.weight_decay) - lr * scale * update, {MATRIX_STATE: buf}


def hidden_matrices(model: torch.nn.Module) -> set[str]:
    """Parameter names of the hidden linear layers' weights (the body's nn.Linear / Conv1D; no LM head)."""
    from ..model.modules import find_modules

    return {f"{m.name}.weight" for m in find_modules(model, [], [], False, 0)}
