"""The strategy interface and its registry: every preconditioner is a `Strategy` subclass in
curvature/strategies/, one file each. Defining the class registers it in STRATEGIES under its
`name`; it declares what it needs (statistic kinds, a base fit, the layout) and, for the statistic
pass it owns (`first_pass`), how to compute one shard's partial sums from the model
(`model_stats`) and/or from stored rows (`rows_stats`). curvature/run.py (`bergson fit`) reads
these declarations instead of a table per strategy. See docs/architecture.md, "Add an estimator".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .options import ApplyOptions, FitOptions
from .space import Block, Space
from .stats import Stats, key

STRATEGIES: dict[str, "Strategy"] = {}


@dataclass
class Fit:
    """A fitted preconditioner: float64 factors per module, in one gradient space."""

    strategy: str
    space: Space
    blocks: list[Block]
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def tensor(self, module: str, factor: str) -> torch.Tensor:
        return self.tensors[key(module, factor)]

    def fingerprint(self) -> str:
        """sha256 over strategy, space, layout and factor bytes: names this exact fit."""
        head = [self.strategy, self.space.to_json(), [b.to_json() for b in self.blocks]]
        h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        for k in sorted(self.tensors):
            h.update(k.encode())
            h.update(self.tensors[k].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class Strategy:
    """A preconditioner family. Subclasses declare `name` and `needs` (statistic kinds), and
    implement `fit` and `apply_block`; defining the class registers it."""

    name: ClassVar[str] = ""  # also the file name in curvature/strategies/ (the CLI lists those)
    needs: ClassVar[tuple[str, ...]] = ()  # statistic kinds the fit reads
    optional: ClassVar[tuple[str, ...]] = ()
    needs_base: ClassVar[str | None] = None  # e.g. "kfac": EK-FAC reuses a KFAC eigenbasis
    needs_layout: ClassVar[bool] = False  # fit(layout=(space, blocks)) instead of statistics (identity)
    uses_fit_options: ClassVar[bool] = False  # the fit reads FitOptions (part of its cache inputs)
    help: ClassVar[str] = ""

    @property
    def first_pass(self) -> str | None:
        """The statistic kind mapped over the shards first: the base's (EK-FAC: kfac), else the
        first of `needs`, else none (identity)."""
        if self.needs_base:
            return STRATEGIES[self.needs_base].first_pass
        return self.needs[0] if self.needs else None

    # statistic passes of the kind this strategy owns (kind == name); None: not available
    def model_stats(self, loaded, modules, docs, space: Space, **kw) -> Stats:
        """One shard's partial sums from hooked model passes over `docs` (kw: fisher, seed,
        loss_reduction, batch_tokens, on_batch)."""
        raise NotImplementedError(f"{self.name} statistics need stored rows")

    def rows_stats(self, rows, blocks: list[Block], space: Space, **kw) -> Stats:
        """One shard's partial sums from stored gradient rows [N, D]."""
        raise NotImplementedError(f"{self.name} statistics need model passes")

    @classmethod
    def has_model_stats(cls) -> bool:
        return cls.model_stats is not Strategy.model_stats

    @classmethod
    def has_rows_stats(cls) -> bool:
        return cls.rows_stats is not Strategy.rows_stats

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            STRATEGIES[cls.name] = cls()

    def fit(self, stats: dict[str, Stats], opts: FitOptions, base: Fit | None,
            layout: tuple[Space, list[Block]] | None) -> Fit:
        raise NotImplementedError

    def apply_block(self, fit: Fit, block: Block, g: torch.Tensor, opts: ApplyOptions) -> torch.Tensor:
        """Precondition one module's gradients g [N, O', I'] (float64)."""
        raise NotImplementedError


def layout_of(stats: Stats) -> tuple[Space, list[Block]]:
    return Space(**stats.meta["space"]), [Block(**b) for b in stats.meta["blocks"]]
