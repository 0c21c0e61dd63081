"""One hooked forward/backward pass per batch, handing each tracked module's token-level
activations a [B, T, I'] and output gradients g [B, T, O'] to a callback.

This is the token-level twin of `capture.GradientCollector` (which only returns per-document
gradients): KFAC needs sum_t a_t a_t^T and sum_t g_t g_t^T, which are not functions of the
per-document gradient. Conventions are the collector's: padding rows of a are zeroed, a bias is an
extra input column equal to the attention mask (ones at real tokens), the loss is each document's
next-token cross-entropy summed (or averaged) over its tokens, and in a projected space a and g are
multiplied by the same seeded matrices (a P_in^T, g P_out^T) so that (g')^T a' is the stored row.

Fisher (Martens 2020, "New insights and perspectives on the natural gradient method", sec. 11):
the empirical Fisher uses the dataset's labels; the true Fisher samples each label from the
model's own predictive distribution. Samples come from a CPU generator seeded per document (from
the run seed and the document's corpus index), so they do not depend on device, batching or sharding.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

from ..data.batching import collate, plan_batches
from ..data.corpus import Doc
from ..gradients.batch_budget import resolve_batch_tokens
from ..gradients.projection import projection_matrix
from ..model.head_loss import has_plain_head, hooked_losses
from ..model.loss import document_losses, upcast
from ..model.modules import ModuleInfo
from .space import Space

# callback(module, a [B, T, I'], g [B, T, O'], mask [B, T]); a is already masked / bias-extended
OnModule = Callable[[ModuleInfo, torch.Tensor, torch.Tensor, torch.Tensor], None]
FISHER = ("empirical", "true")


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """float64 models are computed in float64 (tests); everything else in float32."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def _doc_seed(seed: int, doc_index: int) -> int:
    digest = hashlib.sha256(f"true-fisher:{seed}:{doc_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def sample_labels(logits: torch.Tensor, labels: torch.Tensor, docs: list[Doc], seed: int) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution where `labels` carry loss."""
    out = labels.clone()
    for b, doc in enumerate(docs):  # one document at a time: memory [T, V], not [B, T, V]
        live = (labels[b, 1:] != -100).nonzero().squeeze(-1)  # positions whose next token has loss
        if live.numel() == 0:
            continue
        probs = torch.softmax(logits[b, live].double(), dim=-1).cpu()  # [L, V], CPU: device-independent draws
        gen = torch.Generator(device="cpu").manual_seed(_doc_seed(seed, doc.index))
        drawn = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # [L]
        out[b, live + 1] = drawn.to(labels.device)
    return out


class TokenHooks:
    """Context manager: hooks on `modules` of `model` that call `on_module` during backward."""

    def __init__(self, model, modules: list[ModuleInfo], space: Space, on_module: OnModule):
        self.model, self.modules, self.space, self.on_module = model, modules, space, on_module
        self.dtype = compute_dtype(model)
        self.device = next(model.parameters()).device
        self.mask: torch.Tensor | None = None
        self.embeddings: torch.Tensor | None = None
        self._acts: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self):
        has_plain_head(self.model)  # checked (once per model) before any hook is on
        emb = self.model.get_input_embeddings()
        self._handles.append(emb.register_forward_hook(self._embedding_hook))
        for info in self.modules:
            mod = self.model.get_submodule(info.name)
            self._handles.append(mod.register_forward_hook(self._forward_hook(info)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._acts.clear()

    def drop_batch(self) -> None:
        """Forget everything of the last batch (also after an error inside it)."""
        self._acts.clear()
        self.embeddings = None

    def _embedding_hook(self, module, inputs, output):
        output.requires_grad_(True)
        self.embeddings = output

    def _forward_hook(self, info: ModuleInfo):
        def hook(module, inputs, output):
            if output.requires_grad:
                self._acts[info.name] = inputs[0].detach()
                output.register_hook(lambda g: self._backward(info, g))

        return hook

    def _project(self, info: ModuleInfo, side: str, x: torch.Tensor) -> torch.Tensor:
        p = self.space.projection_dim
        if not p:
            return x
        m = projection_matrix(info.name, side, p, x.shape[-1], self.space.projection_type,
                              self.space.projection_seed, x.device, x.dtype)
        return x @ m.T  # [B, T, p]

    @torch.no_grad()
    def _backward(self, info: ModuleInfo, g: torch.Tensor) -> None:
        mask = self.mask  # [B, T]
        a = self._acts.pop(info.name).to(self.dtype) * mask[..., None]  # [B, T, I]
        if info.has_bias:
            a = torch.cat([a, mask[..., None]], dim=-1)  # [B, T, I+1]
        g = g.to(self.dtype)  # [B, T, O]
        self.on_module(info, self._project(info, "in", a), self._project(info, "out", g), mask)


def hooked_pass(
    loaded,
    modules: list[ModuleInfo],
    docs: list[Doc],
    space: Space,
    on_module: OnModule,
    *,
    batch_tokens: int | None = None,
    loss_reduction: str = "sum",
    fisher: str = "empirical",
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Run every document with loss once through the hooked model; returns token/document counts.

    `loaded` is a models.LoadedModel (its lock serialises passes over a shared model). Parameters'
    `.grad` is never touched: backward only asks for the gradient of the embedding output.
    """
    if fisher not in FISHER:
        raise ValueError(f"fisher must be one of {FISHER}, got {fisher!r}")
    model = loaded.model
    live = [d for d in docs if d.num_loss_tokens > 0]
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    counts = {"tokens": 0, "documents": 0}
    hooks = TokenHooks(model, modules, space, on_module)
    lengths = [len(d.input_ids) for d in live]
    with loaded.lock:
        batch_tokens = resolve_batch_tokens(model, lengths, batch_tokens)
    with loaded.lock, hooks:
        for batch in plan_batches(lengths, batch_tokens):
            chunk = [live[i] for i in batch]
            ids, mask, labels = collate(chunk, pad, hooks.device)
            hooks.mask = mask.to(hooks.dtype)
            with torch.enable_grad():
                if fisher == "true":  # labels drawn from the full logits
                    logits = model(input_ids=ids, attention_mask=mask).logits
                    labels = sample_labels(logits, labels, chunk, seed)
                    loss = document_losses(upcast(logits), labels, loss_reduction).sum()
                    del logits
                else:  # chunked LM head: no [B, T, V] logits kept for backward
                    loss = hooked_losses(model, ids, mask, labels, loss_reduction).sum()
                try:
                    torch.autograd.backward(loss, inputs=[hooks.embeddings])
                finally:
                    hooks.embeddings, loss = None, None
                    hooks.drop_batch()
            counts["tokens"] += int(mask.sum())
            counts["documents"] += len(chunk)
            if on_batch:
                on_batch(len(chunk))
    return counts
