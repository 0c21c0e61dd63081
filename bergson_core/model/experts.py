"""Mixture-of-experts layers with fused expert tensors, split into one linear module per expert.

transformers stores the experts of Mixtral, Qwen-MoE, OLMoE, ... as two 3-D parameters,
gate_up_proj [E, 2I, H] and down_proj [E, H, I], and loops over the experts that received tokens.
Such a module is not a linear, so no expert would be tracked. `split_experts` replaces it by an
equivalent module holding, for each expert e, `experts.{e}.gate_up_proj` and `experts.{e}.down_proj`
as `nn.Linear`s whose weights are views of the fused tensors (no copy). Each is called with the
tokens routed to it only, and remembers their positions (`token_index`, rows of the flattened
[B*T] batch) so that gradient capture can give every document its own share. The router
(a top-k module, not a linear) is never tracked.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

# Routing gates that are linears (Qwen-MoE's shared-expert gate): untracked unless --include names them
ROUTER_GLOBS = ["*shared_expert_gate"]


class ExpertLinear(nn.Linear):
    """One expert's projection; `token_index` [n] holds the flattened batch rows of its last input."""

    token_index: torch.Tensor | None = None


class SplitExperts(nn.ModuleList):
    """The same maths as transformers' fused experts forward, expert by expert through ExpertLinears
    (a list of experts, so they are named `...experts.{e}.gate_up_proj`)."""

    def __init__(self, fused: nn.Module):
        num, two_inter, hidden = fused.gate_up_proj.shape
        experts = []
        for e in range(num):
            expert = nn.Module()
            expert.gate_up_proj = ExpertLinear(hidden, two_inter, bias=False, device="meta")
            expert.down_proj = ExpertLinear(two_inter // 2, hidden, bias=False, device="meta")
            expert.gate_up_proj.weight = nn.Parameter(fused.gate_up_proj.data[e], requires_grad=False)  # a view
            expert.down_proj.weight = nn.Parameter(fused.down_proj.data[e], requires_grad=False)
            experts.append(expert)
        super().__init__(experts)
        self.num_experts = num
        object.__setattr__(self, "act_fn", fused.act_fn)  # parameterless; not a list entry

    def forward(self, hidden_states, top_k_index, top_k_weights):  # [N, H], [N, k], [N, k]
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token_idx, pos = torch.where(top_k_index == e)  # [n] rows routed to e, and which of their k slots
            if token_idx.numel() == 0:
                continue
            expert.gate_up_proj.token_index = expert.down_proj.token_index = token_idx
            gate, up = expert.gate_up_proj(hidden_states[token_idx]).chunk(2, dim=-1)
            h = expert.down_proj(self.act_fn(gate) * up) * top_k_weights[token_idx, pos, None]
            out.index_add_(0, token_idx, h.to(out.dtype))
        return out


def _fused_experts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if set(params) == {"gate_up_proj", "down_proj"} and params["gate_up_proj"].dim() == 3:
            found.append((name, module))
    return found


def _fits(fused: nn.Module) -> bool:
    """The Mixtral layout (gate_up [E, 2I, H] as [gate; up], down [E, H, I], no bias or post-norm);
    other layouts stay fused (and untracked)."""
    num, two_inter, hidden = fused.gate_up_proj.shape
    flags = [getattr(fused, "is_transposed", False), getattr(fused, "has_bias", False),
             not getattr(fused, "is_concatenated", True), not getattr(fused, "has_gate", True),
             getattr(fused, "has_post_expert_norm", False)]
    return not any(flags) and two_inter % 2 == 0 and tuple(fused.down_proj.shape) == (num, hidden, two_inter // 2)


def _same_forward(fused: nn.Module, split: SplitExperts) -> bool:
    """Both forwards on a few random tokens and routings (checked once per layer, at load)."""
    hidden = fused.gate_up_proj.shape[2]
    w = fused.gate_up_proj
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, hidden, generator=gen).to(w.device, w.dtype)
    k = min(2, split.num_experts)
    index = torch.stack([torch.randperm(split.num_experts, generator=gen)[:k] for _ in range(8)]).to(w.device)
    weights = torch.rand(8, k, generator=gen).to(w.device, w.dtype)
    eager = getattr(type(fused).forward, "__wrapped__", type(fused).forward)  # not a grouped-mm kernel
    with torch.no_grad():
        a, b = eager(fused, x, index, weights), split(x, index, weights)
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-12)


def split_experts(model: nn.Module, dry_run: bool = False) -> int:
    """Replace every fused experts module of `model` by its SplitExperts; returns how many (with
    `dry_run`, how many there would be, changing nothing)."""
    count = 0
    for name, fused in _fused_experts(model):
        if not _fits(fused):
            continue
        if dry_run:
            count += 1
            continue
        split = SplitExperts(fused)
        if not _same_forward(fused, split):
            raise ConfigError(f"the experts of {name} do not compute like transformers' fused experts: "
                              "exclude them (--exclude) or use a dense model")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, split)
        count += 1
    return count
