"""Per-document gradients for a list of documents: batching, hooks, and bookkeeping."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..config import GradientOptions
from ..data.batching import collate, plan_batches
from ..data.corpus import Doc
from ..model.loading import LoadedModel
from ..model.modules import ModuleInfo, find_modules
from .batch_budget import resolve_batch_tokens
from .capture import GradientCollector


def _mark_first_batch() -> None:
    """For the start-up benchmark: record when the first batch of this process finished."""
    path = os.environ.get("BERGSON_FIRST_BATCH_FILE")
    if path and not os.path.exists(path):
        with open(path, "w") as f:
            f.write(repr(time.time()))


@dataclass
class ExtractStats:
    documents: int = 0
    tokens: int = 0
    empty: int = 0  # documents with fewer than 2 tokens (or no loss tokens): zero rows


def _padded_length(doc: Doc) -> int:
    """Tokens a document takes in a batch: a preference pair is two rows as long as its longer side."""
    if doc.rejected is None:
        return len(doc.input_ids)
    return 2 * max(len(doc.input_ids), len(doc.rejected.input_ids))


def tracked_modules(loaded: LoadedModel, opts: GradientOptions) -> list[ModuleInfo]:
    return find_modules(loaded.model, opts.include, opts.exclude, opts.include_bias, opts.projection_dim)


def compute_gradients(
    loaded: LoadedModel,
    modules: list[ModuleInfo],
    docs: list[Doc],
    opts: GradientOptions,
    batch_tokens: int | None,
    on_batch: Callable[[int], None] | None = None,
    normalizers: dict | None = None,
) -> tuple[np.ndarray, ExtractStats]:
    """Gradient rows [N, D] (float32, or float64 for float64 models) in the order of `docs`."""
    stats = ExtractStats(documents=len(docs))
    live = [i for i, d in enumerate(docs) if d.num_loss_tokens > 0]
    stats.empty = len(docs) - len(live)
    width = sum(m.width for m in modules)
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    collector = GradientCollector(
        loaded.model, modules, opts.projection_dim, opts.projection_type, opts.projection_seed, normalizers
    )
    lengths = [_padded_length(docs[i]) for i in live]
    smoothing = getattr(opts, "label_smoothing", 0.0)  # a BuildConfig's loss options (absent: plain CE)
    loss = getattr(opts, "loss", "ce")
    out = np.zeros((len(docs), width), dtype=np.float64 if collector.dtype.itemsize == 8 else np.float32)
    with loaded.lock:
        batch_tokens = resolve_batch_tokens(loaded.model, lengths, batch_tokens)
    with loaded.lock, collector:
        for batch in plan_batches(lengths, batch_tokens):
            rows = [live[j] for j in batch]
            chosen = [docs[r] for r in rows]
            pairs = chosen[0].rejected is not None  # the rejected completions ride in the same batch
            ids, mask, labels = collate(chosen + ([d.rejected for d in chosen] if pairs else []), pad, loaded.device)
            weights = [docs[r].weight for r in rows]
            weights = None if all(w == 1.0 for w in weights) else torch.tensor(weights, device=loaded.device)
            reduction = "mean" if pairs else opts.loss_reduction  # log odds of mean log-probabilities
            grads, _ = collector.run_batch(ids, mask, labels, reduction, smoothing, weights, pairs, loss)
            out[rows] = grads.cpu().numpy()
            n_tok = int(mask.sum())
            stats.tokens += n_tok
            if on_batch:
                on_batch(len(rows))
            _mark_first_batch()
    return out, stats
