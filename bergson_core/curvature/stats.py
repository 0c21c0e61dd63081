"""Curvature statistics as mergeable partial sums.

Every statistic is a set of float64 sums plus counts (tokens, documents) over a shard of
documents. Sums over disjoint shards add up exactly to the sum over their union, so a corpus-wide
statistic is a map (one partial per shard, one task each) followed by `reduce_stats`. Means are only
taken when a preconditioner is fitted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from ..errors import UserError

SEP = "::"  # tensor keys are "<module name>::<factor>", e.g. "model.layers.0.mlp.up_proj::A"


class StatisticError(UserError):
    """A statistic that cannot be used: non-finite values, or partials that do not belong together."""


def key(module: str, factor: str) -> str:
    return f"{module}{SEP}{factor}"


def split_key(k: str) -> tuple[str, str]:
    module, factor = k.rsplit(SEP, 1)
    return module, factor


@dataclass
class Stats:
    """Partial (or total) sums of one kind of statistic.

    kind:    "kfac" (A, S), "ekfac-lambda" (L), "diagonal" (D), "autocorr" (H), ...
    tensors: float64 CPU sums keyed by key(module, factor)
    counts:  "tokens" and/or "documents" summed with the tensors
    meta:    everything that must agree to merge: space, block layout, Fisher type, eigenbasis, ...
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    counts: dict[str, int]
    meta: dict = field(default_factory=dict)

    def tensor(self, module: str, factor: str) -> torch.Tensor:
        return self.tensors[key(module, factor)]

    def check_finite(self, where: str = "") -> None:
        """Raise StatisticError naming the first module whose sums hold NaN or inf."""
        for k, t in self.tensors.items():
            if not torch.isfinite(t).all():
                module, factor = split_key(k)
                bad = int((~torch.isfinite(t)).sum())
                raise StatisticError(
                    f"{self.kind} statistic {factor} of module {module}{where} has {bad} non-finite values "
                    "(NaN/inf): use a float32/float64 model dtype or check the inputs; nothing was written"
                )

    def fingerprint(self) -> str:
        """sha256 over meta, counts and tensor bytes: names this exact statistic."""
        h = hashlib.sha256(json.dumps([self.kind, self.meta, self.counts], sort_keys=True, default=str).encode())
        for k in sorted(self.tensors):
            h.update(k.encode())
            h.update(self.tensors[k].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def reduce_stats(partials: list[Stats]) -> Stats:
    """Sum partial statistics (one per shard) into a total. All must share kind and meta."""
    if not partials:
        raise StatisticError("no partial statistics to reduce: compute at least one shard first")
    first = partials[0]
    for i, p in enumerate(partials[1:], start=1):
        if p.kind != first.kind:
            raise StatisticError(f"cannot reduce {first.kind} with {p.kind} statistics (partial {i})")
        if p.meta != first.meta:
            diff = sorted(k for k in set(p.meta) | set(first.meta) if p.meta.get(k) != first.meta.get(k))
            raise StatisticError(
                f"partial {i} of {first.kind} was computed with different settings ({', '.join(diff)}): "
                "recompute the stale shards"
            )
        if set(p.tensors) != set(first.tensors):
            raise StatisticError(f"partial {i} of {first.kind} tracks different modules: recompute it")
    tensors = {}
    for k in first.tensors:  # sequential sums: memory stays one factor per module, not one per shard
        total = first.tensors[k].to(torch.float64).clone()
        for p in partials[1:]:
            total += p.tensors[k]
        tensors[k] = total
    counts = {k: sum(int(p.counts.get(k, 0)) for p in partials) for k in first.counts}
    return Stats(first.kind, tensors, counts, dict(first.meta))
