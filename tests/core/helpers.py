"""Helpers for the core tests: tiny models, in-memory corpora, and an independent per-document
autograd reference for gradient rows."""

from __future__ import annotations

import json
import threading

import numpy as np
import torch
import torch.nn.functional as F

from bergson_core.config import GradientOptions
from bergson_core.data.corpus import Corpus, Doc
from bergson_core.model.loading import LoadedModel
from bergson_core.model.modules import ModuleInfo, find_modules
from bergson_core.model.tiny import tiny_model

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park and the cat ran after it",
    "birds sing",
    "the quick brown fox jumps over the lazy dog",
    "rain falls on the green hills in spring",
    "we read books",
    "a small boat sails across the calm blue sea at night",
    "the sun rises",
    "children play in the snow",
    "old trees grow near the river bank",
    "music fills the quiet room",
    "the train leaves at noon",
    "she paints the door red",
    "wind moves the tall grass",
    "he writes a letter to his friend in the city",
    "stars shine",
    "the baker makes fresh bread every morning",
    "fish swim in the cold lake",
    "a cat and a dog sleep by the fire",
    "the clock on the wall is slow",
]

QUERIES = [
    "the cat sat on the mat",
    "the dog ran in the park",
    "fresh bread in the morning",
    "stars shine at night",
]


def make_loaded(arch: str, tokenizer, dtype=torch.float64, **kw) -> LoadedModel:
    """A tiny model wrapped as bergson_core would load it (eval, frozen parameters)."""
    kw.setdefault("hidden", 16)
    kw.setdefault("layers", 1)
    model = tiny_model(arch, len(tokenizer), seed=kw.pop("seed", 0), dtype=dtype, **kw)
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, torch.device("cpu"), dtype, threading.Lock())


def corpus_from_rows(rows: dict[str, list]) -> Corpus:
    import datasets

    ds = datasets.Dataset.from_dict(rows)
    return Corpus(ds, "memory://test", "fingerprint")


def docs_from_texts(tokenizer, texts: list[str]) -> list[Doc]:
    out = []
    for i, t in enumerate(texts):
        ids = tokenizer([t])["input_ids"][0]
        out.append(Doc(i, str(i), list(ids), list(ids)))
    return out


def grad_options(**kw) -> GradientOptions:
    kw.setdefault("projection_dim", 0)
    return GradientOptions(**kw)


def modules_for(loaded: LoadedModel, opts: GradientOptions) -> list[ModuleInfo]:
    return find_modules(loaded.model, opts.include, opts.exclude, opts.include_bias, opts.projection_dim)


def reference_gradients(
    loaded: LoadedModel, modules: list[ModuleInfo], docs: list[Doc], loss_reduction: str = "sum",
    token_loss=None,
) -> np.ndarray:
    """One document at a time, unpadded, with autograd on the parameters themselves.

    The loss is computed here in float64 with F.cross_entropy (not the HF `labels=` loss, which
    upcasts to float32), and the row is assembled from `param.grad`-equivalents: the weight
    gradient as out x in (Conv1D weights are stored in x out, so transposed), then the bias as an
    extra last column when the module tracks it. The document's loss is scaled by its weight.
    """
    model = loaded.model
    width = sum(m.width for m in modules)
    rows = np.zeros((len(docs), width), dtype=np.float64)
    subs = [model.get_submodule(m.name) for m in modules]
    params = []
    for info, sub in zip(modules, subs):
        params.append(sub.weight)
        if info.has_bias:
            params.append(sub.bias)
    try:
        for p in params:
            p.requires_grad_(True)
        for r, doc in enumerate(docs):
            labels = torch.tensor(doc.labels[1:])
            if (labels != -100).sum() == 0:
                continue  # no loss tokens: the gradient is zero
            ids = torch.tensor([doc.input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            assert logits.dtype == torch.float64
            if token_loss is None:
                loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
            else:  # another per-token loss [T] of (logits [T, V], labels [T]), summed over counted tokens
                loss = token_loss(logits, labels)[labels != -100].sum()
            loss = loss * doc.weight
            if loss_reduction == "mean":
                loss = loss / (labels != -100).sum()
            grads = iter(torch.autograd.grad(loss, params))
            parts = []
            for info in modules:
                w = next(grads)
                w = w.T if info.transposed else w
                assert w.shape == (info.out_features, info.in_features)
                if info.has_bias:
                    w = torch.cat([w, next(grads)[:, None]], dim=1)
                parts.append(w.reshape(-1))
            rows[r] = torch.cat(parts).numpy()
    finally:
        for p in params:
            p.requires_grad_(False)
    return rows


def write_jsonl(path, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)
