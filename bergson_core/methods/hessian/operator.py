"""Curvature-vector products through the model, in the index's full gradient layout.

The curvature is the mean over corpus documents of the Hessian of each document's loss (the index's
loss reduction) with respect to the tracked modules' weights (and biases with --include-bias):

    true: H v = (1/N) sum_i d^2 L_i / d theta^2 v            (reverse-over-reverse autograd)
    ggn:  G v = (1/N) sum_i J_i^T (d^2 L_i / d z^2) J_i v    (Gauss-Newton; z = logits, J = dz/dtheta)

Vectors are rows of the index's full (p = 0) layout: per module its O x I weight gradient (Conv1D
transposed back), then the bias as an extra column, modules in index order. Products of a block of
vectors V [K, P] run as one batched backward (`is_grads_batched`), so K queries cost about one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...data.batching import collate
from ...data.corpus import Doc
from ...model.loss import document_losses, upcast
from ...model.modules import ModuleInfo


@dataclass
class Layout:
    """Tracked parameters as leaves, and the map between them and a full-layout row."""

    modules: list[ModuleInfo]
    params: dict[str, torch.Tensor]  # functional_call name -> leaf requiring grad

    @classmethod
    def of(cls, model: torch.nn.Module, modules: list[ModuleInfo], dtype: torch.dtype) -> "Layout":
        params = {}
        for m in modules:
            mod = model.get_submodule(m.name)
            params[f"{m.name}.weight"] = mod.weight.detach().to(dtype).clone().requires_grad_(True)
            if m.has_bias:
                params[f"{m.name}.bias"] = mod.bias.detach().to(dtype).clone().requires_grad_(True)
        return cls(modules, params)

    @property
    def width(self) -> int:
        return sum(m.out_features * (m.in_features + m.has_bias) for m in self.modules)

    def to_rows(self, tensors: dict[str, torch.Tensor], batch: tuple[int, ...] = ()) -> torch.Tensor:
        """Per-parameter tensors (with leading batch dims) -> rows [*batch, P]."""
        out = []
        for m in self.modules:
            w = tensors[f"{m.name}.weight"]
            w = w.transpose(-1, -2) if m.transposed else w  # [*, O, I]
            if m.has_bias:
                w = torch.cat([w, tensors[f"{m.name}.bias"].unsqueeze(-1)], dim=-1)  # [*, O, I+1]
            out.append(w.reshape(*batch, -1))
        return torch.cat(out, dim=-1)

    def from_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows [*batch, P] -> per-parameter tensors shaped like the parameters (batch dims first)."""
        batch, out, offset = rows.shape[:-1], {}, 0
        for m in self.modules:
            cols = m.in_features + m.has_bias
            g = rows[..., offset:offset + m.out_features * cols].reshape(*batch, m.out_features, cols)
            offset += m.out_features * cols
            w = g[..., :m.in_features]
            out[f"{m.name}.weight"] = w.transpose(-1, -2) if m.transposed else w
            if m.has_bias:
                out[f"{m.name}.bias"] = g[..., m.in_features]
        return out


def _logits(model, layout: Layout, ids, mask) -> torch.Tensor:
    # the math attention kernel: the fused ones (flash, memory-efficient) have no double backward
    with sdpa_kernel([SDPBackend.MATH]):
        return upcast(functional_call(model, layout.params, (), {"input_ids": ids, "attention_mask": mask}).logits)


def loss_gradients(model, layout: Layout, docs: list[Doc], pad_id: int, reduction: str) -> torch.Tensor:
    """Per-document loss gradients [N, P] in the full layout (one backward per document)."""
    device = next(iter(layout.params.values())).device
    rows = []
    for d in docs:
        ids, mask, labels = collate([d], pad_id, device)
        loss = document_losses(_logits(model, layout, ids, mask), labels, reduction).sum()
        grads = torch.autograd.grad(loss, list(layout.params.values()), allow_unused=True)
        rows.append(layout.to_rows({k: g if g is not None else torch.zeros_like(p)
                                    for (k, p), g in zip(layout.params.items(), grads)}))
    return torch.stack(rows)


def _ce_hessian_product(logits: torch.Tensor, labels: torch.Tensor, jv: torch.Tensor, reduction: str) -> torch.Tensor:
    """d^2 L / dz^2 applied to jv [K, B, T, V] (softmax Hessian diag(p) - p p^T at each counted position)."""
    p = torch.softmax(logits[:, :-1].detach(), dim=-1)  # [B, T-1, V]
    counted = (labels[:, 1:] != -100).to(p.dtype)  # [B, T-1]
    if reduction == "mean":
        counted = counted / counted.sum(dim=1, keepdim=True).clamp(min=1)
    u = jv[:, :, :-1]  # [K, B, T-1, V]
    hu = p * u - p * (p * u).sum(-1, keepdim=True)
    out = torch.zeros_like(jv)
    out[:, :, :-1] = hu * counted[..., None]
    return out


def curvature_product(model, layout: Layout, docs: list[Doc], pad_id: int, reduction: str, kind: str,
                      batch_size: int = 32) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (mean over `docs` of the true Hessian or GGN) v, for V [K, P] (rows of the full layout)."""
    leaves = list(layout.params.values())
    device = leaves[0].device

    def product(v: torch.Tensor) -> torch.Tensor:
        vs = layout.from_rows(v)
        batched = [vs[k] for k in layout.params]
        total = torch.zeros_like(v)
        for lo in range(0, len(docs), batch_size):
            ids, mask, labels = collate(docs[lo:lo + batch_size], pad_id, device)
            logits = _logits(model, layout, ids, mask)  # [B, T, V]
            if kind == "true":
                loss = document_losses(logits, labels, reduction).sum()
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
                hv = torch.autograd.grad(grads, leaves, grad_outputs=batched, is_grads_batched=True)
            else:  # J v by the double-vjp trick (reverse mode only), then J^T (H_z J v)
                dummy = torch.zeros_like(logits, requires_grad=True)
                jt = torch.autograd.grad(logits, leaves, grad_outputs=dummy, create_graph=True)
                jv = torch.autograd.grad(jt, dummy, grad_outputs=batched, is_grads_batched=True)[0]  # [K, B, T, V]
                hz = _ce_hessian_product(logits, labels, jv, reduction)
                hv = torch.autograd.grad(logits, leaves, grad_outputs=hz, is_grads_batched=True)
            total += layout.to_rows(dict(zip(layout.params, hv)), (v.shape[0],))
        return total / len(docs)

    return product
