"""Per-document next-token loss without a [B, T, V] logits tensor.

A hooked pass only needs the gradient that flows into the transformer body. The full logits of a
batch cost B x T x V floats, and cross-entropy keeps two or three such tensors alive through
backward: for a 49k-token vocabulary and an 8k-token batch that is 5 GB, more than the model.
Here the body runs once, the LM head is applied only at positions that carry a label, a chunk of
tokens at a time, and backward recomputes each chunk's logits instead of keeping them.
The numbers equal `document_losses(model(...).logits, ...)` (same maths, float64 exact).

Models whose logits are not `head(body(x))` (logit soft-capping, logit scaling) are detected once
per model by comparing both on a short input, and keep the full-logits path.
"""

from __future__ import annotations

import threading
import weakref

import torch

from .loss import document_losses, upcast

CHUNK_BYTES = 256 * 2**20  # logits of one chunk (float32): bounds the head's transient memory

_plain_head: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()
_plain_head_lock = threading.Lock()


class _ChunkedHeadCE(torch.autograd.Function):
    """Token losses [N] = logsumexp(z) - (1 - eps) z[target] - eps mean(z), z = h W^T + b (eps: label
    smoothing, as F.cross_entropy defines it); backward recomputes logits chunk by chunk and returns
    the gradient of h only (the head's parameters are frozen)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, smoothing: float = 0.0):  # hidden [N, H]
        losses = hidden.new_empty(hidden.shape[0], dtype=_loss_dtype(hidden.dtype))
        for s in range(0, hidden.shape[0], chunk):
            logits = _logits(hidden[s : s + chunk], weight, bias)  # [n, V]
            picked = logits.gather(1, targets[s : s + chunk, None])[:, 0]
            losses[s : s + chunk] = torch.logsumexp(logits, dim=1) - (1 - smoothing) * picked
            if smoothing:
                losses[s : s + chunk] -= smoothing * logits.mean(dim=1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.smoothing = chunk, smoothing
        return losses

    @staticmethod
    def backward(ctx, grad_losses):  # [N]
        hidden, weight, bias, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        rows = torch.arange(min(ctx.chunk, hidden.shape[0]), device=hidden.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            probs = torch.softmax(_logits(hidden[s : s + ctx.chunk], weight, bias), dim=1)  # [n, V]
            n = probs.shape[0]
            if ctx.smoothing:  # d loss / d logits = softmax - (1 - eps) onehot - eps / V
                probs -= ctx.smoothing / probs.shape[1]
            probs[rows[:n], targets[s : s + n]] -= 1.0 - ctx.smoothing
            probs *= grad_losses[s : s + n, None]
            grad_hidden[s : s + n] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)  # [n, H]
        return grad_hidden, None, None, None, None, None


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)
    return out.to(_loss_dtype(out.dtype))


def _split(model: torch.nn.Module):
    """(body, head) when logits are a plain linear head over the body's last hidden state."""
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Linear) or body is None or body is model:
        return None
    if head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        return None  # a trainable head needs its own gradient: the full path computes it
    return body, head


def has_plain_head(model: torch.nn.Module) -> bool:
    """True when model(x).logits == head(body(x).last_hidden_state) (checked once per model) and
    the head is frozen now."""
    parts = _split(model)
    if parts is None:
        return False
    with _plain_head_lock:
        if model in _plain_head:
            return _plain_head[model]
    body, head = parts
    ids = torch.arange(1, 9, device=head.weight.device)[None] % max(2, head.weight.shape[0])  # [1, 8]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        mine = head(body(input_ids=ids, attention_mask=mask).last_hidden_state)
    ok = full.shape == mine.shape and torch.equal(full, mine)
    with _plain_head_lock:
        _plain_head[model] = ok
    return ok


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def head_document_losses(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         labels: torch.Tensor, reduction: str = "sum", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-document next-token cross-entropy [B] through the body and a chunked head.

    Only positions whose next token carries a label (labels != -100) reach the head, so padding
    and prompt tokens cost nothing there. Call only when has_plain_head(model)."""
    body, head = _split(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    target = labels[:, 1:]  # [B, T-1]
    where = (target != -100).nonzero(as_tuple=True)  # (doc, position) of each counted token
    h = hidden[:, :-1][where]  # [N, H]
    tok = _ChunkedHeadCE.apply(h, head.weight, head.bias, target[where], chunk_rows(head.weight.shape[0]),
                               label_smoothing)  # [N]
    losses = torch.zeros(labels.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, where[0], tok)  # [B]
    if reduction == "mean":
        losses = losses / (target != -100).sum(dim=1).clamp(min=1)
    return losses


def hooked_losses(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, reduction: str = "sum", label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-document losses [B] for a hooked pass: through the chunked LM head when the model has a
    plain one (no [B, T, V] logits kept for backward), else from the full (upcast) logits."""
    if has_plain_head(model):
        return head_document_losses(model, input_ids, attention_mask, labels, reduction, label_smoothing)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return document_losses(upcast(logits), labels, reduction, label_smoothing=label_smoothing)
