"""The space a preconditioner lives in, and where each module's block sits in a gradient row.

A curvature statistic is only meaningful for gradients computed the same way: full per-module
gradients (projection_dim = 0, O x I(+1) numbers) or LoGra-projected ones (p x p numbers, Choe et
al. 2024). A `Space` names that choice; it is stored in every statistic and preconditioner
manifest, and a mismatch is refused instead of silently producing wrong scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import StoreError
from ..gradients.projection import projection_matrix
from ..model.modules import ModuleInfo


@dataclass(frozen=True)
class Space:
    projection_dim: int = 0  # p; 0 = full gradients
    projection_type: str = "rademacher"
    projection_seed: int = 0
    include_bias: bool = False

    @classmethod
    def of(cls, opts, projection_dim: int | None = None) -> "Space":
        """The space of a GradientOptions-like object (or an index spec dict); `projection_dim`
        overrides p, e.g. 0 for the full-gradient space of a projected index."""
        get = opts.get if isinstance(opts, dict) else lambda k, d=None: getattr(opts, k, d)
        p = get("projection_dim", 0) if projection_dim is None else projection_dim
        return cls(int(p), get("projection_type", "rademacher"), int(get("projection_seed", 0)),
                   bool(get("include_bias", False)))

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if not self.projection_dim:
            return f"full gradients (bias={self.include_bias})"
        return (f"projection p={self.projection_dim} {self.projection_type} seed={self.projection_seed} "
                f"(bias={self.include_bias})")

    def check(self, other: "Space", what: str) -> None:
        """Refuse gradients from another space (a different projection or bias setting)."""
        if self != other:
            raise StoreError(
                f"{what} was fitted on {self.describe()} but these gradients use {other.describe()}: "
                "refit it for this index (`bergson fit`)"
            )


@dataclass(frozen=True)
class Block:
    """One module's gradient as a matrix [rows, cols] = [O', I'] at columns offset.. of a row."""

    name: str
    rows: int  # O (full) or p
    cols: int  # I (+1 with bias) or p
    offset: int

    @property
    def width(self) -> int:
        return self.rows * self.cols

    def to_json(self) -> dict:
        return asdict(self)


def layout(modules: list[ModuleInfo], space: Space) -> list[Block]:
    """Blocks of `modules` in `space`, in module order (the same order as a stored gradient row)."""
    blocks, offset = [], 0
    for m in modules:
        if space.projection_dim:
            rows = cols = space.projection_dim
        else:
            rows, cols = m.out_features, m.in_features + (1 if m.has_bias else 0)
        blocks.append(Block(m.name, rows, cols, offset))
        offset += rows * cols
    return blocks


def index_layout(meta: dict, projection_dim: int | None = None) -> tuple[Space, list[ModuleInfo], list[Block]]:
    """(space, modules, blocks) of an index from its index.json (`Index.meta()`); blocks match the
    stored rows exactly. `projection_dim=0` gives the full-gradient space of the same modules."""
    space = Space.of(meta["spec"], projection_dim)
    modules = [ModuleInfo(**m) for m in meta["modules"]]
    blocks = layout(modules, space)
    if projection_dim is None and [(b.offset, b.width) for b in blocks] != [(m.offset, m.width) for m in modules]:
        raise StoreError("the index's module layout does not match its projection spec: rebuild the index")
    return space, modules, blocks


def row_width(blocks: list[Block]) -> int:
    return sum(b.width for b in blocks)


def blocks_from_json(items: list[dict]) -> list[Block]:
    return [Block(**b) for b in items]


def block_view(rows, block: Block):
    """The block's part of rows [N, D] as [N, O', I'] (a view for torch tensors and numpy arrays)."""
    return rows[:, block.offset : block.offset + block.width].reshape(-1, block.rows, block.cols)


def project_rows(rows: torch.Tensor | np.ndarray, modules: list[ModuleInfo], space: Space):
    """Project full-gradient rows [N, D_full] into `space` (p > 0): P_out G P_in^T per module.

    Used to score a query preconditioned in the full space against a projected index (an
    approximation: inner products are preserved only in expectation, Johnson-Lindenstrauss).
    """
    as_numpy = isinstance(rows, np.ndarray)
    x = torch.from_numpy(rows) if as_numpy else rows
    full = layout(modules, Space(0, include_bias=space.include_bias))
    out = []
    for m, b in zip(modules, full):
        g = block_view(x, b)  # [N, O, I]
        p_out = projection_matrix(m.name, "out", space.projection_dim, b.rows, space.projection_type,
                                  space.projection_seed, x.device, x.dtype)
        p_in = projection_matrix(m.name, "in", space.projection_dim, b.cols, space.projection_type,
                                 space.projection_seed, x.device, x.dtype)
        out.append((p_out @ g @ p_in.T).flatten(1))  # [N, p*p]
    res = torch.cat(out, dim=1)
    return res.numpy() if as_numpy else res
