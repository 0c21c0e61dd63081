"""LiSSA (Agarwal, Bullins & Hazan 2017, "Second-order stochastic optimization for machine learning in
linear time"; as used for influence functions by Koh & Liang 2017): (H + lambda I)^-1 v by the
truncated Neumann recursion

    h_0 = v,   h_j = v + (1 - d) h_{j-1} - H_j h_{j-1} / s,   result h_depth / s,

whose fixed point is h = (H / s + d I)^-1 v, i.e. h / s = (H + d s I)^-1 v: lambda = d s. It
converges when every eigenvalue of H + lambda I is positive and s exceeds (lambda_max + lambda) / 2;
H_j is the curvature on the j-th mini-batch of documents (or the whole corpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Product = Callable[[int, torch.Tensor], torch.Tensor]  # (iteration j, V [K, P]) -> H_j V


@dataclass
class LissaResult:
    x: torch.Tensor  # [K, P] the inverse-HVPs
    updates: list[float] = field(default_factory=list)  # max over vectors of |h_j - h_{j-1}| / |h_j|, per step


def lissa(product: Product, v: torch.Tensor, depth: int, scale: float, damping: float) -> LissaResult:
    """(H + damping I)^-1 v [K, P] (damping absolute, in the curvature's units: d = damping / scale)."""
    d = damping / scale
    h = v.clone()
    updates = []
    for j in range(depth):
        new = v + (1 - d) * h - product(j, h) / scale
        updates.append(float(((new - h).norm(dim=1) / new.norm(dim=1).clamp(min=1e-300)).max()))
        h = new
    return LissaResult(h / scale, updates)


def power_iteration(product: Product, width: int, steps: int, dtype: torch.dtype, seed: int = 0) -> float:
    """The largest |eigenvalue| of H, estimated by `steps` products (a seeded start vector)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, width, generator=gen, dtype=dtype)
    top = 0.0
    for j in range(steps):
        y = product(j, x / x.norm())
        top, x = float(y.norm()), y
    return top
