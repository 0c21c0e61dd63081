"""Adam and Adafactor normalisers read from optimizer states: a real Hugging Face Trainer
checkpoint, a plain optimizer state_dict and a safetensors file, matched against the live
optimizer's own state (found by parameter identity, not by name), Conv1D orientation included."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import save_file

from bergson_core.gradients.capture import GradientCollector
from bergson_core.gradients.normalizers import NormalizerError, load_normalizers
from bergson_core.model.modules import find_modules
from bergson_core.model.tiny import tiny_model, train_tokenizer

from .tiny_setup import random_texts, rel_err


def batches(tok, n=8, width=8):
    enc = [tok(t)["input_ids"][:width] for t in random_texts(n, seed=1)]
    out = []
    for e in enc:
        pad = width - len(e)
        out.append({"input_ids": torch.tensor(e + [0] * pad), "attention_mask": torch.tensor([1] * len(e) + [0] * pad),
                    "labels": torch.tensor(e + [-100] * pad)})
    return out


def tiny(arch, hidden=16, seed=0):
    tok = train_tokenizer(random_texts(8, seed=1))
    return tok, tiny_model(arch, len(tok), seed=seed, hidden=hidden, layers=1)


def by_identity(model, optimizer) -> dict[str, dict]:
    """name -> live optimizer state, matched by parameter object identity."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: optimizer.state[p] for g in optimizer.param_groups for p in g["params"] if p in optimizer.state}


def check_scales(norms, modules, want_weight, want_bias):
    gen = torch.Generator().manual_seed(0)
    for m in modules:
        cols = m.in_features + (1 if m.has_bias else 0)
        g = torch.randn(2, m.out_features, cols, generator=gen, dtype=torch.float64)
        w = want_weight(m)  # [O, I]
        scale = torch.cat([w, want_bias(m)[:, None]], dim=1) if m.has_bias else w
        assert rel_err(norms[m.name](g), g * scale) <= 1e-6, m.name


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory):
    from transformers import Trainer, TrainingArguments  # Trainer needs accelerate: a test dependency, no skip

    tok, model = tiny("gpt2")
    model.train()
    out = tmp_path_factory.mktemp("trainer")
    args = TrainingArguments(output_dir=str(out), max_steps=2, save_steps=2, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, logging_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=batches(tok))
    trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return model.eval(), os.path.join(out, "checkpoint-2"), by_identity(model, opt), opt.param_groups[0]


def test_adam_from_trainer_checkpoint(trainer_checkpoint):
    model, folder, live, group = trainer_checkpoint
    modules = find_modules(model, [], [], True, 0)
    assert all(m.transposed for m in modules)  # GPT-2 Conv1D
    norms = load_normalizers(folder, model, modules, kind="adam")
    beta2, eps = group["betas"][1], group["eps"]

    def scale(name):
        st = live[name]
        v = st["exp_avg_sq"].double() / (1 - beta2 ** float(st["step"]))
        return 1 / (v.sqrt() + eps)

    check_scales(norms, modules, lambda m: scale(m.name + ".weight").T, lambda m: scale(m.name + ".bias"))


def test_normalizer_plugs_into_the_collector(trainer_checkpoint):
    model, folder, _, _ = trainer_checkpoint
    model = copy.deepcopy(model).double().requires_grad_(False)
    modules = find_modules(model, [], [], True, 0)
    norms = load_normalizers(folder, model, modules)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9]])
    mask, labels = torch.ones_like(ids), ids.clone()
    with GradientCollector(model, modules, 0) as plain:
        raw, _ = plain.run_batch(ids, mask, labels)
    with GradientCollector(model, modules, 0, normalizers=norms) as normed:
        got, _ = normed.run_batch(ids, mask, labels)
    for m in modules:
        sl = slice(m.offset, m.offset + m.width)
        want = raw[:, sl].reshape(1, m.out_features, -1) * norms[m.name].scale
        assert rel_err(got[:, sl].reshape(want.shape), want) <= 1e-10


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adafactor_state_dict(arch, tmp_path):
    from transformers.optimization import Adafactor

    tok, model = tiny(arch)
    opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
    for b in batches(tok)[:2]:
        out = model(input_ids=b["input_ids"][None], attention_mask=b["attention_mask"][None], labels=b["labels"][None])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    modules = find_modules(model, [], [], True, 0)
    norms = load_normalizers(str(tmp_path), model, modules)  # auto-detects Adafactor
    live = by_identity(model, opt)

    def weight(m):
        st = live[m.name + ".weight"]
        inv = Adafactor._approx_sq_grad(st["exp_avg_sq_row"].double(), st["exp_avg_sq_col"].double())  # rsqrt(v)
        return inv.T if m.transposed else inv

    check_scales(norms, modules, weight, lambda m: live[m.name + ".bias"]["exp_avg_sq"].double().rsqrt())
    n = norms[modules[0].name]  # factored: the weight part is an outer product (foldable into hooks)
    assert rel_err(torch.outer(n.row_scale, n.col_scale), weight(modules[0])) <= 1e-10


def test_safetensors_state_matches_torch_state(trainer_checkpoint, tmp_path):
    model, folder, live, _ = trainer_checkpoint
    modules = find_modules(model, [], [], True, 0)
    flat = {}
    for name, st in live.items():
        flat[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    save_file(flat, str(tmp_path / "v.safetensors"))
    a = load_normalizers(str(tmp_path / "v.safetensors"), model, modules, bias_correction=False, eps=1e-8)
    b = load_normalizers(folder, model, modules, bias_correction=False, eps=1e-8)
    for m in modules:
        assert torch.equal(a[m.name].scale, b[m.name].scale)


def test_state_from_another_model_is_refused(trainer_checkpoint, tmp_path):
    _, folder, live, _ = trainer_checkpoint
    _, other = tiny("gpt2", hidden=8)
    modules = find_modules(other, [], [], True, 0)
    with pytest.raises(NormalizerError) as e:
        load_normalizers(folder, other, modules)
    assert "does not belong to this model" in str(e.value) and "\n" not in str(e.value)
    # a named (safetensors) state with the wrong shapes names the parameter
    save_file({f"{n}.exp_avg_sq": st["exp_avg_sq"].contiguous() for n, st in live.items()}, str(tmp_path / "v.safetensors"))
    with pytest.raises(NormalizerError, match="has shape .* another model") as e:
        load_normalizers(str(tmp_path / "v.safetensors"), other, modules)
    assert "\n" not in str(e.value)
    with pytest.raises(NormalizerError, match="no optimizer.pt"):
        load_normalizers(str(tmp_path), other, modules)
    with pytest.raises(NormalizerError, match="not a factored Adafactor"):
        load_normalizers(folder, trainer_checkpoint[0], find_modules(trainer_checkpoint[0], [], [], True, 0), kind="adafactor")
