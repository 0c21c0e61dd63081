"""The default token budget of a hooked batch, sized to the model's activation memory.

What a hooked forward keeps for backward grows with tokens x layers x width: a 135M-parameter
Llama keeps about 1.2 MB per token in float32, so the old fixed 8,192-token budget meant 7 GB of
activations on top of the model. When `--batch-tokens` is not given, the budget is measured instead:
one forward of a single document of the corpus's longest length records the bytes of every tensor
autograd saves (parameters excluded), and the batch gets as many tokens as fit ACTIVATION_BUDGET.
The measurement depends only on the model, its dtype and device type, and the length, so the same
inputs always give the same batches (and the same bytes in the store).
"""

from __future__ import annotations

import threading
import weakref

import torch

from ..model.head_loss import has_plain_head, hooked_losses

MAX_AUTO_TOKENS = 8192  # on CPU: never more than the old fixed budget
# On a GPU, bigger batches pay: on an H200, a SmolLM2-135M-shaped model in bf16 extracted 84k tokens/s
# with 32k-token batches against 60k with 8k (benchmarks/gpu_check.py); memory still bounds the batch.
MAX_AUTO_TOKENS_CUDA = 32768
CPU_BUDGET = 2**28  # bytes of saved activations per batch and replica on CPU (256 MiB)
CUDA_BUDGET_FRACTION = 0.25  # of the device's total memory

_measured: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def max_auto_tokens(device: torch.device) -> int:
    return MAX_AUTO_TOKENS_CUDA if device.type == "cuda" else MAX_AUTO_TOKENS


def activation_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * CUDA_BUDGET_FRACTION)
    return CPU_BUDGET


def _bucket(length: int) -> int:
    """Lengths are measured at the next power of two (at least 16), so few forwards are needed."""
    return max(16, 1 << (max(1, length) - 1).bit_length())


def saved_bytes(model: torch.nn.Module, length: int) -> int:
    """Bytes autograd saves for backward in a hooked pass over one document of `length` tokens."""
    with _lock:
        cached = _measured.get(model, {}).get(length)
    if cached is not None:
        return cached
    param = next(model.parameters())
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(length, device=param.device) % max(2, vocab))[None]  # [1, L]
    mask = torch.ones_like(ids)
    labels = ids.clone()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    has_plain_head(model)  # checked (and cached) before the hook below is on

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = hooked_losses(model, ids, mask, labels)
        del loss
    finally:
        handle.remove()
    total = sum(seen.values())
    with _lock:
        _measured.setdefault(model, {})[length] = total
    return total


def auto_batch_tokens(model: torch.nn.Module, lengths: list[int], budget: int | None = None) -> int:
    """Tokens per batch that keep one batch's saved activations within the budget (at least the
    longest document, at most max_auto_tokens of the device)."""
    device = next(model.parameters()).device
    cap = max_auto_tokens(device)
    if not lengths:
        return cap
    longest = max(lengths)
    bucket = _bucket(longest)
    budget = activation_budget(device) if budget is None else budget
    per_token = saved_bytes(model, bucket) / bucket
    fit = int(budget // per_token) if per_token > 0 else cap
    return max(longest, min(cap, fit))


def resolve_batch_tokens(model: torch.nn.Module, lengths: list[int], batch_tokens: int | None) -> int:
    """An explicit budget is kept as given; None means auto_batch_tokens."""
    return batch_tokens if batch_tokens else auto_batch_tokens(model, lengths)
