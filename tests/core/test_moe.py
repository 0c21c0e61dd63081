"""Mixture-of-experts models: fused expert tensors are split into one tracked linear per expert,
the router is not tracked, and every expert's per-document gradient equals the matching slice of
the fused parameter's gradient from a float64 per-document autograd loop on the unsplit model."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.model.experts import split_experts
from bergson_core.model.loading import LoadedModel
from bergson_core.model.tiny import tiny_model

from .helpers import TEXTS, docs_from_texts, grad_options

EXPERT = re.compile(r"(.*)\.experts\.(\d+)\.(gate_up_proj|down_proj)$")


def moe(arch: str, vocab: int) -> torch.nn.Module:
    model = tiny_model(arch, vocab, hidden=16, layers=1, dtype=torch.float64)
    model.config._experts_implementation = "eager"  # the loop over experts (grouped_mm has no float64)
    return model.requires_grad_(False)


def fused_reference(model, modules, docs) -> np.ndarray:
    """Per document, autograd on the fused [E, O, I] tensors (and the plain linears' weights)."""
    params, pick = [], []
    for m in modules:
        hit = EXPERT.match(m.name)
        if hit:
            params.append(getattr(model.get_submodule(hit[1] + ".experts"), hit[3]))
            pick.append(int(hit[2]))
        else:
            params.append(model.get_submodule(m.name).weight)
            pick.append(None)
    unique = list({id(p): p for p in params}.values())
    rows = np.zeros((len(docs), sum(m.width for m in modules)))
    for p in unique:
        p.requires_grad_(True)
    try:
        for r, doc in enumerate(docs):
            logits = model(input_ids=torch.tensor([doc.input_ids])).logits[0, :-1]
            loss = F.cross_entropy(logits, torch.tensor(doc.labels[1:]), reduction="sum")
            grads = dict(zip(map(id, unique), torch.autograd.grad(loss, unique)))
            rows[r] = torch.cat([(grads[id(p)] if e is None else grads[id(p)][e]).reshape(-1)
                                 for p, e in zip(params, pick)]).numpy()
    finally:
        for p in unique:
            p.requires_grad_(False)
    return rows


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_expert_gradients_match_fused_autograd(tokenizer, arch):
    model = moe(arch, len(tokenizer))
    assert split_experts(model) == 1
    loaded = LoadedModel(model, tokenizer, torch.device("cpu"), torch.float64, threading.Lock())
    opts = grad_options()
    modules = tracked_modules(loaded, opts)
    names = [m.name for m in modules]
    experts = [n for n in names if EXPERT.match(n)]
    assert len(experts) == 2 * 4  # gate_up and down of each of the 4 experts
    assert not any(n.endswith(("mlp.gate", "shared_expert_gate")) for n in names)  # routers untracked
    if arch == "qwen2_moe":
        assert any(".shared_expert." in n for n in names)  # the shared expert's linears see flattened tokens
    docs = docs_from_texts(tokenizer, TEXTS[:6])
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    want = fused_reference(moe(arch, len(tokenizer)), modules, docs)  # the same weights, never split
    for m in modules:
        if EXPERT.match(m.name):
            assert np.abs(want[:, m.offset : m.offset + m.width]).max() > 0, m.name  # every expert got tokens
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
