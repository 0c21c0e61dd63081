"""Identity preconditioner: gradients unchanged, so scores are plain gradient inner products
(the "identity" strategy of kronfluence; TracIn-style scores at one checkpoint)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..space import Space
from ..strategy import Fit, Strategy


class Identity(Strategy):
    name = "identity"
    needs_layout = True
    help = "No curvature: plain gradient inner products."

    def fit(self, stats, opts, base, layout) -> Fit:
        if layout is None:
            raise ConfigError("the identity preconditioner needs layout=(space, blocks)")
        return identity_fit(layout[1], layout[0])

    def apply_block(self, fit, block, g, opts) -> torch.Tensor:
        return g


def identity_fit(blocks, space: Space) -> Fit:
    """An identity `Fit` for a layout (needs no statistics)."""
    return Fit("identity", space, list(blocks), {}, {})
