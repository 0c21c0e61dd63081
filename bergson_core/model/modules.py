"""Which modules are tracked, and where each one's numbers sit in a gradient row.

Every `nn.Linear` and GPT-2 `Conv1D` of the transformer body is tracked; the LM head (output
embeddings) is excluded by default; on a model with a PEFT adapter only the adapter's LoRA factors
are tracked by default (model/adapters.py); MoE routers are not tracked and fused experts are split
into one linear per expert at load (model/experts.py). A per-document gradient of a module is always laid out as
out x in (O x I, plus a ones column for the bias), even for Conv1D whose weight is stored in x out.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .adapters import ADAPTER_GLOBS, has_adapter
from .experts import ROUTER_GLOBS


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D

        return Conv1D
    except ImportError:  # pragma: no cover - very old or very new transformers
        return None


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    in_features: int  # I, without the bias column
    out_features: int  # O
    has_bias: bool
    transposed: bool  # True for Conv1D: weight stored as I x O
    width: int  # numbers this module contributes to a row
    offset: int  # first column of this module in a row

    def to_json(self) -> dict:
        return asdict(self)


def shape_of(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in, out, transposed) of a trackable module, or None."""
    conv = _conv1d_type()
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if conv is not None and isinstance(module, conv):
        i, o = module.weight.shape
        return i, o, True
    return None


def find_modules(
    model: nn.Module,
    include: list[str],
    exclude: list[str],
    include_bias: bool,
    projection_dim: int,
) -> list[ModuleInfo]:
    """Tracked modules in model order, with their column ranges in a gradient row."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not include and has_adapter(model):  # an adapter is what was tuned: its factors, not the base
        include = ADAPTER_GLOBS
    found, offset = [], 0
    for name, module in model.named_modules():
        shape = shape_of(module)
        if shape is None:
            continue
        if include:
            if not any(fnmatch.fnmatchcase(name, g) for g in include):
                continue
        elif module is head or any(fnmatch.fnmatchcase(name, g) for g in ROUTER_GLOBS):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        i, o, transposed = shape
        has_bias = include_bias and getattr(module, "bias", None) is not None
        cols = i + (1 if has_bias else 0)
        width = projection_dim * projection_dim if projection_dim else o * cols
        found.append(ModuleInfo(name, i, o, has_bias, transposed, width, offset))
        offset += width
    if not found:
        raise ConfigError(
            f"no linear modules match include={include} exclude={exclude}: loosen the module globs"
        )
    return found


def row_width(modules: list[ModuleInfo]) -> int:
    return sum(m.width for m in modules)


def get_module(model: nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)
