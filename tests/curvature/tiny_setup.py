"""Tiny float64 models, corpora and gradients shared by the curvature tests (CPU, offline)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from bergson_core.config import GradientOptions
from bergson_core.curvature import Space, layout
from bergson_core.data.corpus import Doc
from bergson_core.gradients.extract import compute_gradients
from bergson_core.model.loading import LoadedModel
from bergson_core.model.modules import ModuleInfo, find_modules
from bergson_core.model.tiny import tiny_model, train_tokenizer

WORDS = ("the cat sat on a mat dog ran far away big small red blue green tree house river stone bird "
         "fish light dark old new").split()


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(n)]


@dataclass
class Setup:
    loaded: LoadedModel
    modules: list[ModuleInfo]
    train: list[Doc]
    query: list[Doc]
    space: Space
    opts: GradientOptions

    def grads(self, docs: list[Doc], batch_tokens: int = 4096) -> np.ndarray:
        """Per-document gradient rows [N, D] from the core capture hooks (an independent path)."""
        rows, _ = compute_gradients(self.loaded, self.modules, docs, self.opts, batch_tokens)
        return rows

    @property
    def blocks(self):
        return layout(self.modules, self.space)


def make_setup(arch: str = "gpt2", n_train: int = 16, n_query: int = 4, hidden: int = 16, layers: int = 1,
               projection_dim: int = 0, include: list[str] | None = None, seed: int = 0) -> Setup:
    texts = random_texts(n_train + n_query, seed)
    tok = train_tokenizer(texts)
    model = tiny_model(arch, len(tok), seed=seed, dtype=torch.float64, hidden=hidden, layers=layers)
    model.requires_grad_(False)
    loaded = LoadedModel(model, tok, torch.device("cpu"), torch.float64, threading.Lock())
    ids = tok(texts)["input_ids"]
    docs = [Doc(i, str(i), x, list(x)) for i, x in enumerate(ids)]
    opts = GradientOptions(projection_dim=projection_dim, include_bias=True, include=include or [])
    modules = find_modules(model, opts.include, [], True, projection_dim)
    return Setup(loaded, modules, docs[:n_train], docs[n_train:], Space.of(opts), opts)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))
