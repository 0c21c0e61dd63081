"""Per-document gradients from hooks, without materialising parameter `.grad`.

Forward hooks keep each tracked module's input activations a [B, T, I]; a tensor hook on the
module's output receives the output gradient g [B, T, O] during backward. The per-document weight
gradient is G_b = sum_t g[b,t]^T a[b,t] (O x I). Parameters have requires_grad=False and the
embedding output is made to require grad, so backward computes activation gradients only.

The loss is the sum over documents of each document's next-token cross-entropy (summed over its
tokens, or averaged with loss_reduction="mean"); documents in a batch never interact, so the batch
gradient split by document is exactly each document's own gradient.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..model.adapters import adapters_disabled
from ..model.head_loss import has_plain_head, hooked_losses
from ..model.loss import kl_document_losses, log_odds_losses, upcast
from ..model.modules import ModuleInfo
from .projection import projection_matrix

# A normaliser maps a full per-document gradient [B, O, I(+1)] of one module to a new one.
Normalizer = Callable[[torch.Tensor], torch.Tensor]


class GradientCollector:
    """Install hooks on `modules` of `model`; `run_batch` returns one gradient row per document."""

    def __init__(
        self,
        model: torch.nn.Module,
        modules: list[ModuleInfo],
        projection_dim: int,
        projection_type: str = "rademacher",
        projection_seed: int = 0,
        normalizers: dict[str, Normalizer] | None = None,
    ):
        self.model = model
        self.modules = modules
        self.p = projection_dim
        self.kind = projection_type
        self.seed = projection_seed
        self.normalizers = normalizers or {}
        param = next(p for p in model.parameters() if p.device.type != "meta")  # not an offloaded one
        self.device = param.device
        # float64 models are computed in float64 (tests); everything else in float32
        self.dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.width = sum(m.width for m in modules)
        self._handles: list = []
        self._acts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # input, routed rows
        self._mask: torch.Tensor | None = None
        self._out: torch.Tensor | None = None
        self._proj: dict[tuple[str, str], torch.Tensor] = {}

    # -- hooks ------------------------------------------------------------------------------
    def __enter__(self):
        has_plain_head(self.model)  # checked (once per model) before any hook is on
        emb = self.model.get_input_embeddings()
        self._handles.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
        for info in self.modules:
            mod = self.model.get_submodule(info.name)
            self._handles.append(mod.register_forward_hook(self._forward_hook(info)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._acts.clear()

    def _forward_hook(self, info: ModuleInfo):
        def hook(module, inputs, output):
            if not output.requires_grad:
                return
            self._acts[info.name] = (inputs[0].detach(), getattr(module, "token_index", None))
            output.register_hook(lambda g: self._backward(info, g))

        return hook

    def _matrix(self, info: ModuleInfo, side: str, n: int) -> torch.Tensor:
        key = (info.name, side)
        if key not in self._proj:
            self._proj[key] = projection_matrix(
                info.name, side, self.p, n, self.kind, self.seed, self.device, self.dtype
            )
        return self._proj[key]

    def _per_token(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """[B, T, F] from a module input or output given as flattened tokens [B*T, F], or as the
        rows `rows` [n] of them only (an expert's routed tokens; the others are zeros)."""
        if x.dim() == 3:
            return x
        bsz, length = self._mask.shape
        if rows is not None:
            x = x.new_zeros(bsz * length, x.shape[-1]).index_copy_(0, rows, x)
        return x.reshape(bsz, length, x.shape[-1])

    def _backward(self, info: ModuleInfo, g: torch.Tensor) -> None:
        a, rows = self._acts.pop(info.name)
        # to the row's device: a --device-map model computes each module where Accelerate put it
        a = self._per_token(a.to(self.device, self.dtype), rows)  # [B, T, I]
        g = self._per_token(g.to(self.device, self.dtype), rows)  # [B, T, O]
        mask = self._mask[..., None]  # [B, T, 1]
        norm = self.normalizers.get(info.name)
        if self.p and norm is None:  # factorised projection inside the hook
            if info.has_bias:
                a = torch.cat([a * mask, mask], dim=-1)  # [B, T, I+1]; ones at real tokens
                ap = a @ self._matrix(info, "in", a.shape[-1]).T  # [B, T, p]
            else:  # mask the projected rows, not a: the same numbers, I/p times less memory traffic
                ap = (a @ self._matrix(info, "in", a.shape[-1]).T) * mask  # [B, T, p]
            gp = g @ self._matrix(info, "out", g.shape[-1]).T  # [B, T, p]
            grad = torch.einsum("btp,btq->bpq", gp, ap)  # [B, p, p]
        else:
            a = a * mask  # padding positions contribute nothing, exactly
            if info.has_bias:
                a = torch.cat([a, mask], dim=-1)  # [B, T, I+1]; ones at real tokens
            grad = torch.einsum("bto,bti->boi", g, a)  # [B, O, I]
            if norm is not None:
                grad = norm(grad)
            if self.p:
                p_out = self._matrix(info, "out", grad.shape[1])
                p_in = self._matrix(info, "in", grad.shape[2])
                grad = p_out @ grad @ p_in.T  # [B, p, p]
        self._out[:, info.offset : info.offset + info.width] = grad.flatten(1)

    def _kl_losses(self, input_ids, attention_mask, labels, reduction: str) -> torch.Tensor:
        """KL losses [B]; the base pass runs without gradient, so no hook records anything in it."""
        with torch.no_grad(), adapters_disabled(self.model):
            base = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return kl_document_losses(upcast(logits), base, labels, reduction)

    # -- one batch --------------------------------------------------------------------------
    def run_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        loss_reduction: str = "sum",
        label_smoothing: float = 0.0,
        weights: torch.Tensor | None = None,
        pairs: bool = False,
        loss: str = "ce",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient rows [B, D] (on the model's device) and per-document losses [B]. `weights` [B]
        scales each document's loss (a policy-gradient advantage), and so its gradient row. With
        `pairs`, rows [:B/2] are chosen and [B/2:] the rejected completions of B/2 preference pairs
        (loss: log_odds_losses of their mean cross-entropies); a pair's row is the sum of its two.
        `loss="kl"`: KL of the model's next-token distributions from the base model's (adapters off)."""
        bsz = input_ids.shape[0]
        self._mask = attention_mask.to(self.dtype)
        self._out = torch.zeros(bsz, self.width, device=self.device, dtype=self.dtype)
        try:
            if loss == "kl":
                losses = self._kl_losses(input_ids, attention_mask, labels, loss_reduction)
            else:
                losses = hooked_losses(self.model, input_ids, attention_mask, labels, loss_reduction, label_smoothing)
            if pairs:
                losses = log_odds_losses(losses[: bsz // 2], losses[bsz // 2 :])
            (losses if weights is None else losses * weights.to(losses.dtype)).sum().backward()
            out = self._out[: bsz // 2] + self._out[bsz // 2 :] if pairs else self._out
            return out, losses.detach()
        finally:  # also after an error inside the batch: nothing of this batch outlives it
            self._out, self._mask = None, None
            self._acts.clear()


