"""PEFT / LoRA adapters: gradients w.r.t. the adapter factors only, equal to per-document autograd in
float64; a fresh adapter is the same in every process; an adapter of another base model is refused
before anything is written."""

from __future__ import annotations

import os

import numpy as np
import peft
import pytest
import torch

from bergson_core.config import BuildConfig, GradientOptions
from bergson_core.errors import UserError
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.index.build import prepare_build
from bergson_core.model.adapters import attach_adapter, parse_lora_spec
from bergson_core.model.loading import clear_cache, load_model
from bergson_core.model.tiny import save_tiny, tiny_model

from .helpers import TEXTS, docs_from_texts, grad_options, make_loaded, reference_gradients, write_jsonl


def save_adapter(path, arch: str, vocab: int, hidden: int = 16, targets=("q_proj", "v_proj")) -> str:
    """A LoRA adapter with random A and B (B = 0 would make every A gradient zero)."""
    base = tiny_model(arch, vocab, hidden=hidden, layers=1)
    torch.manual_seed(1)
    cfg = peft.LoraConfig(r=3, lora_alpha=6, target_modules=list(targets), init_lora_weights=False)
    peft.get_peft_model(base, cfg).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tokenizer):
    return save_adapter(tmp_path_factory.mktemp("adapter"), "llama", len(tokenizer))


def test_adapter_gradients_match_autograd(tokenizer, adapter_dir):
    loaded = make_loaded("llama", tokenizer)
    attach_adapter(loaded.model, adapter_dir)
    loaded.model.to(torch.float64).requires_grad_(False)
    opts = grad_options()
    modules = tracked_modules(loaded, opts)
    names = [m.name for m in modules]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)  # base weights not tracked
    assert sum(".lora_A." in n for n in names) == sum(".lora_B." in n for n in names) == 2
    a = next(m for m in modules if ".lora_A." in m.name)
    assert (a.out_features, a.in_features) == (3, 16)  # r x in: A is its own module
    docs = docs_from_texts(tokenizer, TEXTS[:6])
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    want = reference_gradients(loaded, modules, docs)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("model")), "llama", TEXTS, hidden=16, layers=1)


def build_cfg(tmp_path, model_dir, **kw) -> BuildConfig:
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS[:4]])
    return BuildConfig(model=model_dir, dataset=data, index=str(tmp_path / "index"), device="cpu",
                       dtype="float64", projection_dim=0, **kw)


def test_new_lora_is_deterministic_and_only_b_moves(tmp_path, model_dir):
    cfg = build_cfg(tmp_path, model_dir, new_lora="r=2,target_modules=q_proj|v_proj")
    rows = []
    for _ in range(2):  # a second process would rebuild the adapter: same seed, same factors
        clear_cache()
        loaded = load_model(cfg)
        modules = tracked_modules(loaded, cfg)
        docs = docs_from_texts(loaded.tokenizer, TEXTS[:3])
        rows.append(compute_gradients(loaded, modules, docs, cfg, 100_000)[0])
    clear_cache()
    np.testing.assert_array_equal(rows[0], rows[1])
    for m in modules:  # peft's init: B = 0, so A's gradient is zero and B's is not
        block = rows[0][:, m.offset: m.offset + m.width]
        assert (np.abs(block).max() == 0) == (".lora_A." in m.name), m.name
    assert cfg.spec()["new_lora"] and "adapter" not in cfg.spec()
    assert "new_lora" not in build_cfg(tmp_path, model_dir).spec()  # older indexes keep their hash


def test_lora_spec_parsing():
    assert parse_lora_spec("r=4,target_modules=q_proj|v_proj") == {
        "r": 4, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    for bad in ("r=4", "r=x,target_modules=q", "rank=4,target_modules=q"):
        with pytest.raises(UserError):
            parse_lora_spec(bad)


@pytest.mark.parametrize("case", ["other hidden size", "other architecture", "missing layers", "not a folder"])
def test_adapter_of_another_model_is_one_line_error(tmp_path, model_dir, tokenizer, case):
    if case == "other hidden size":
        path = save_adapter(tmp_path / "a", "llama", len(tokenizer), hidden=24)
    elif case == "other architecture":
        path = save_adapter(tmp_path / "a", "gpt2", len(tokenizer), targets=("c_attn",))
    elif case == "missing layers":  # an adapter of a 1-layer model on a 2-layer one: half the factors absent
        path = save_adapter(tmp_path / "a", "llama", len(tokenizer))
        model_dir = save_tiny(str(tmp_path / "m2"), "llama", TEXTS, hidden=16, layers=2)
    else:
        path = str(tmp_path / "nowhere")
    clear_cache()
    cfg = build_cfg(tmp_path, model_dir, adapter=path)
    with pytest.raises(UserError) as e:
        prepare_build(cfg)
    clear_cache()
    assert "\n" not in str(e.value) and "adapter" in str(e.value)
    assert not os.path.exists(cfg.index)  # nothing written


class KL(GradientOptions):  # plus the build's loss option
    loss: str = "kl"


def test_kl_loss_gradients_match_autograd(tokenizer, adapter_dir):
    """--loss kl: sum over tokens of KL(adapter model || base model), the base being a separate copy
    without any adapter (not the same model with its adapter switched off)."""
    loaded = make_loaded("llama", tokenizer)
    attach_adapter(loaded.model, adapter_dir)
    loaded.model.to(torch.float64).requires_grad_(False)
    base = make_loaded("llama", tokenizer).model
    opts = KL(projection_dim=0)
    modules = tracked_modules(loaded, opts)
    docs = docs_from_texts(tokenizer, TEXTS[:5])
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    params = [loaded.model.get_submodule(m.name).weight for m in modules]
    want = np.zeros_like(got)
    for p in params:
        p.requires_grad_(True)
    try:
        for r, doc in enumerate(docs):
            ids = torch.tensor([doc.input_ids])
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1], -1)
            with torch.no_grad():
                logq = torch.log_softmax(base(input_ids=ids).logits[0, :-1], -1)
            kl = (logp.exp() * (logp - logq)).sum()
            want[r] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params)]).numpy()
    finally:
        for p in params:
            p.requires_grad_(False)
    assert np.abs(want).max() > 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert all(not p.requires_grad for p in loaded.model.parameters())  # adapters back on, still frozen


def test_kl_loss_needs_an_adapter(tmp_path, model_dir):
    cfg = build_cfg(tmp_path, model_dir, loss="kl")
    with pytest.raises(UserError, match="adapter"):
        prepare_build(cfg)
    assert not os.path.exists(cfg.index)
