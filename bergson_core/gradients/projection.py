"""Seeded random projection matrices for the factorised (LoGra-style) projection.

For a module with per-document gradient G (O x I) we store P_out G P_in^T (p x p), computed inside
the hooks as (g P_out^T)^T (a P_in^T) without forming G (Choe et al. 2024, "What is your data worth
to GPT?"). Matrices are regenerated, never stored: a CPU torch.Generator seeded from the module name,
the side and the user seed gives the same numbers on every device and in every process.
"""

from __future__ import annotations

import functools
import hashlib

import torch


def _seed(name: str, side: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@functools.lru_cache(maxsize=512)
def _cpu_matrix(name: str, side: str, rows: int, cols: int, kind: str, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(_seed(name, side, seed))
    if kind == "rademacher":
        m = torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1
    elif kind == "normal":
        m = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"unknown projection type {kind!r}")
    return m / rows**0.5  # [p, n], entries scaled by 1/sqrt(p)


def projection_matrix(
    name: str, side: str, p: int, n: int, kind: str, seed: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """The p x n matrix for one module side ('in' or 'out'); identical across devices.

    Always a fresh tensor: the cached CPU matrix is never handed out, so a caller scaling its
    copy in place cannot change what later callers regenerate."""
    return _cpu_matrix(name, side, p, n, kind, seed).to(device=device, dtype=dtype, copy=True)
