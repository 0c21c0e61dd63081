"""Memory of hooked passes: nothing of a batch outlives it, the LM head never materialises a
[B, T, V] logits tensor for backward, and the default batch size follows the model's activations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bergson_core.curvature.hooks import hooked_pass
from bergson_core.curvature.space import Space
from bergson_core.data.batching import collate
from bergson_core.gradients.batch_budget import MAX_AUTO_TOKENS, auto_batch_tokens, saved_bytes
from bergson_core.gradients.capture import GradientCollector
from bergson_core.model.head_loss import has_plain_head, head_document_losses
from bergson_core.model.loss import document_losses
from bergson_core.model.tiny import tiny_model

from .helpers import docs_from_texts

ARCHS = ["gpt2", "llama", "gpt_neox"]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_head_equals_full_logits(loaded_models, tokenizer, texts, arch, reduction, monkeypatch):
    """Losses and the gradient reaching the body equal those from the full logits (float64), also
    when the head is applied a few tokens at a time."""
    monkeypatch.setattr("bergson_core.model.head_loss.CHUNK_BYTES", 3 * 8 * len(tokenizer))  # 3-row chunks
    model = loaded_models(arch).model
    assert has_plain_head(model)
    docs = docs_from_texts(tokenizer, texts[:6])
    ids, mask, labels = collate(docs, 0, torch.device("cpu"))
    labels[0, : 3] = -100  # prompt-like masking too

    def run(fn):
        emb = model.get_input_embeddings()
        box = {}
        handle = emb.register_forward_hook(lambda m, i, o: box.setdefault("e", o.requires_grad_(True)))
        try:
            losses = fn()
            (grad,) = torch.autograd.grad((losses * torch.arange(1.0, 7.0, dtype=losses.dtype)).sum(), box["e"])
        finally:
            handle.remove()
        return losses.detach(), grad

    want = run(lambda: document_losses(model(input_ids=ids, attention_mask=mask).logits, labels, reduction))
    got = run(lambda: head_document_losses(model, ids, mask, labels, reduction))
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    assert want[1].abs().max() > 1e-3
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


def test_scaled_logits_keep_the_full_path(tokenizer):
    """A model whose logits are not head(body(x)) is detected and not given the chunked head."""
    model = tiny_model("gpt2", len(tokenizer), dtype=torch.float64, hidden=16, layers=1)
    model.requires_grad_(False)
    forward = model.forward

    def scaled(*a, **kw):
        out = forward(*a, **kw)
        out.logits = out.logits * 0.5  # as logit scaling / soft-capping models do
        return out

    model.forward = scaled
    assert not has_plain_head(model)


def test_collector_keeps_nothing_between_batches(loaded_models, tokenizer, texts):
    loaded = loaded_models("llama")
    from bergson_core.gradients.extract import tracked_modules

    from .helpers import grad_options

    modules = tracked_modules(loaded, grad_options(projection_dim=4))
    full = tracked_modules(loaded, grad_options(projection_dim=0))
    docs = docs_from_texts(tokenizer, texts[:4])
    ids, mask, labels = collate(docs, 0, torch.device("cpu"))
    boom = {full[-1].name: lambda g: (_ for _ in ()).throw(RuntimeError("boom"))}
    collector = GradientCollector(loaded.model, modules, 4)
    with collector:
        collector.run_batch(ids, mask, labels)
        assert collector._acts == {} and collector._out is None and collector._mask is None
    failing = GradientCollector(loaded.model, full, 0, normalizers=boom)
    with failing:
        with pytest.raises(RuntimeError, match="boom"):
            failing.run_batch(ids, mask, labels)
        assert failing._acts == {} and failing._out is None and failing._mask is None


def test_token_hooks_keep_nothing_after_an_error(loaded_models, tokenizer, texts):
    loaded = loaded_models("gpt2")
    from bergson_core.gradients.extract import tracked_modules

    from .helpers import grad_options

    modules = tracked_modules(loaded, grad_options())
    docs = docs_from_texts(tokenizer, texts[:4])
    seen = []

    def on_module(info, a, g, mask):
        seen.append(info.name)
        raise RuntimeError("boom")

    import bergson_core.curvature.hooks as H

    made = []
    real = H.TokenHooks

    class Recording(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    H.TokenHooks = Recording
    try:
        with pytest.raises(RuntimeError, match="boom"):
            hooked_pass(loaded, modules, docs, Space(0, "rademacher", 0), on_module)
    finally:
        H.TokenHooks = real
    assert seen and made[0]._acts == {} and made[0].embeddings is None and made[0]._handles == []


def test_auto_batch_tokens_follows_the_model(tokenizer):
    """Wider, deeper models get fewer tokens per batch; a tiny one keeps the old 8192; the batch
    always holds at least the longest document."""
    small = tiny_model("llama", len(tokenizer), hidden=16, layers=1)
    big = tiny_model("llama", len(tokenizer), hidden=128, layers=6, heads=4)
    for m in (small, big):
        m.requires_grad_(False)
    assert auto_batch_tokens(small, [40, 100]) == MAX_AUTO_TOKENS
    per_token = saved_bytes(big, 128) / 128
    # 6 layers x (a handful of [T, 128] and [T, 256] float32 tensors): between 10 kB and 200 kB a token
    assert 1e4 < per_token < 2e5, per_token
    budget = 16 * 2**20
    got = auto_batch_tokens(big, [100, 120], budget=budget)
    assert got == min(MAX_AUTO_TOKENS, int(budget // per_token)) and got < MAX_AUTO_TOKENS
    assert auto_batch_tokens(big, [5000], budget=budget) == 5000


RSS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, torch
    from bergson_core.config import GradientOptions
    from bergson_core.data.corpus import Doc
    from bergson_core.gradients.extract import compute_gradients, tracked_modules
    from bergson_core.model.loading import LoadedModel
    from bergson_core.model.tiny import tiny_model

    torch.set_num_threads(1)
    model = tiny_model("llama", 512, hidden=256, layers=12, heads=4, max_positions=256)
    model.requires_grad_(False)
    loaded = LoadedModel(model, None, torch.device("cpu"), torch.float32, threading.Lock())
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(120):  # lengths vary, so batch shapes vary as on a real corpus
        n = int(torch.randint(24, 64, (1,), generator=g))
        ids = torch.randint(3, 512, (n,), generator=g).tolist()
        docs.append(Doc(index=i, doc_id=str(i), input_ids=ids, labels=ids))
    opts = GradientOptions(projection_dim=16)
    peaks, batches = {}, [0]

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    def on_batch(n):
        batches[0] += 1
        if batches[0] in (5, 40):
            peaks[batches[0]] = hwm()

    compute_gradients(loaded, tracked_modules(loaded, opts), docs, opts, 128, on_batch)
    print(json.dumps({"batches": batches[0], "peaks": peaks}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_is_flat_over_many_batches():
    """A 12-layer, 256-wide Llama over 40+ batches: the peak after 40 batches is within 10 % (and
    60 MB) of the peak after 5, i.e. nothing of a batch accumulates."""
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["batches"] >= 40
    p5, p40 = out["peaks"]["5"], out["peaks"]["40"]
    assert p40 <= max(p5 * 1.10, p5 + 60 * 2**20), (p5, p40)
