"""The trainer: optimizers equal torch's, accumulation and weights are exact, resumption is exact."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from bergson_core.config.eval import TrainOptions
from bergson_core.train.trainer import (
    OPTIMIZER_FILE,
    STATE_FILE,
    adamw_update,
    init_state,
    learning_rate,
    sgd_update,
    step_batches,
    total_steps,
    train,
)

from . import helpers


@pytest.fixture(scope="module")
def tok():
    return helpers.tokenizer()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_update_equals_torch_optimizer(kind):
    """The pure-function step reproduces torch.optim over several steps (float64)."""
    opts = TrainOptions(optimizer=kind, lr=0.05, weight_decay=0.1, momentum=0.9 if kind == "sgd" else 0.0,
                        beta1=0.8, beta2=0.95, eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ref = p0.clone().requires_grad_(True)
    if kind == "adamw":
        opt = torch.optim.AdamW([ref], lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                                weight_decay=opts.weight_decay, foreach=False)
    else:
        opt = torch.optim.SGD([ref], lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay,
                              foreach=False)
    update = adamw_update if kind == "adamw" else sgd_update
    p, state = p0.clone(), init_state(p0, opts)
    for step in range(1, 6):
        g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        ref.grad = g.clone()
        opt.step()
        p, state = update(p, g, state, step, opts.lr, opts)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-13, atol=1e-15)


def test_adamw_step_is_differentiable():
    opts = TrainOptions(lr=0.1)
    p = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, dtype=torch.float64, requires_grad=True)
    state = {k: v + 0.5 for k, v in init_state(p, opts).items()}
    new, _ = adamw_update(p, g, state, 3, opts.lr, opts)
    assert torch.autograd.gradcheck(lambda gg: adamw_update(p, gg, state, 3, opts.lr, opts)[0], (g,))
    assert new.requires_grad


def test_schedule_warmup_then_linear_decay():
    opts = TrainOptions(lr=1.0, warmup_steps=4, schedule="linear")
    lrs = [learning_rate(s, 12, opts) for s in range(12)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    decay = torch.tensor(lrs[3:])
    steps = decay[:-1] - decay[1:]
    assert torch.allclose(steps, steps[0].expand_as(steps)) and steps[0] > 0  # straight line down
    assert lrs[-1] == pytest.approx(1.0 / 9)  # the line reaches 0 one step after the last
    const = TrainOptions(lr=1.0, warmup_steps=2, schedule="constant")
    assert [learning_rate(s, 6, const) for s in range(6)] == pytest.approx([0.5, 1, 1, 1, 1, 1])


def test_data_order_is_a_seeded_permutation():
    opts = TrainOptions(batch_size=3, grad_accum=2, epochs=2, train_seed=7)
    n = 10
    steps = total_steps(n, opts)
    assert steps == 4
    epoch0 = [d for s in range(2) for mb in step_batches(n, s, opts) for d in mb]
    epoch1 = [d for s in range(2, 4) for mb in step_batches(n, s, opts) for d in mb]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1
    assert all(len(mb) <= 3 for s in range(steps) for mb in step_batches(n, s, opts))
    assert step_batches(n, 1, opts) == step_batches(n, 1, opts.model_copy())
    assert step_batches(n, 1, opts) != step_batches(n, 1, opts.model_copy(update={"train_seed": 8}))


def _reference_adamw(model, docs, opts: TrainOptions, weights):
    """Independent loop: torch.optim.AdamW, each document's loss computed alone and unpadded."""
    n = len(docs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                            weight_decay=opts.weight_decay, foreach=False)
    total = total_steps(n, opts)
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, total, opts)
        opt.zero_grad()
        rows = [r for mb in step_batches(n, step, opts) for r in mb]
        loss = 0.0
        for r in rows:
            ids = torch.tensor([docs[r].input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            loss = loss + weights[r] * F.cross_entropy(logits, ids[0, 1:], reduction="mean")
        (loss / (opts.batch_size * opts.grad_accum)).backward()
        opt.step()
    return model


def test_training_equals_an_independent_loop(tok):
    docs = helpers.docs(tok)
    opts = TrainOptions(lr=0.01, weight_decay=0.01, warmup_steps=2, epochs=2, batch_size=3, grad_accum=2,
                        train_loss="mean")
    w = torch.linspace(0.0, 2.0, len(docs), dtype=torch.float64)
    ours = helpers.model(tok)
    result = train(ours, docs, opts, weights=w)
    ref = _reference_adamw(helpers.model(tok), docs, opts, w)
    assert result.steps == total_steps(len(docs), opts) == 4
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_accumulation_equals_a_larger_batch(tok):
    docs = helpers.docs(tok)
    a, b = helpers.model(tok), helpers.model(tok)
    train(a, docs, TrainOptions(lr=0.01, batch_size=2, grad_accum=3, epochs=2))
    train(b, docs, TrainOptions(lr=0.01, batch_size=6, grad_accum=1, epochs=2))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


def test_zero_weight_document_is_absent(tok):
    """A weight-0 document changes nothing, whatever its text (up to rounding: its length changes the
    padding of its batch)."""
    docs = helpers.docs(tok)
    other = helpers.docs(tok, helpers.TEXTS[:4] + ["music music music music"] + helpers.TEXTS[5:])
    w = torch.ones(len(docs), dtype=torch.float64)
    w[4] = 0.0
    a, b, c = helpers.model(tok), helpers.model(tok), helpers.model(tok)
    opts = TrainOptions(lr=0.02, batch_size=4, epochs=2, optimizer="sgd", momentum=0.5)
    train(a, docs, opts, weights=w)
    train(b, other, opts, weights=w)
    train(c, other, opts)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13, msg=name)
    assert any(not torch.allclose(x, z, rtol=1e-6) for x, z in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_resume_from_checkpoint_is_exact(tok, tmp_path, kind):
    docs = helpers.docs(tok)
    opts = TrainOptions(optimizer=kind, lr=0.01, momentum=0.9, warmup_steps=1, epochs=3, batch_size=4,
                        checkpoint_every=2)
    straight = helpers.model(tok, dtype=torch.float32)
    full = train(straight, docs, opts)
    ckpt = str(tmp_path / "ckpt")
    first = train(helpers.model(tok, dtype=torch.float32), docs, opts, checkpoint_dir=ckpt, stop_after=5)
    assert first.steps == 5 and os.path.isdir(os.path.join(ckpt, "checkpoint-4"))
    resumed_model = helpers.model(tok, dtype=torch.float32)
    resumed = train(resumed_model, docs, opts, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 4  # the last complete checkpoint, not the crashed step 5
    assert resumed.lr_history == full.lr_history and resumed.loss_history == full.loss_history
    for (name, x), y in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(x, y), name
    last = os.path.join(ckpt, f"checkpoint-{full.steps}")
    with open(os.path.join(last, STATE_FILE)) as f:
        state = json.load(f)
    assert state["lr_history"] == full.lr_history and state["step"] == full.steps
    # safetensors, not a pickle: an 8-byte little-endian header length, a JSON header naming every
    # parameter's state by key, and the tensor bytes filling exactly the rest of the file
    path = os.path.join(last, OPTIMIZER_FILE)
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    kinds = ("exp_avg", "exp_avg_sq") if kind == "adamw" else ("momentum_buffer",)
    params = [name for name, p in straight.named_parameters() if p.requires_grad]
    assert set(header) == {f"{p}.{k}" for p in params for k in kinds}
    assert max(v["data_offsets"][1] for v in header.values()) + 8 + size == os.path.getsize(path)
    assert not os.path.exists(os.path.join(last, "optimizer.pt"))


def test_adam_state_feeds_the_adam_normalizer(tok, tmp_path):
    """The saved optimizer state is what the gradient normaliser reads (safetensors, named keys)."""
    from bergson_core.gradients.normalizers import load_normalizers
    from bergson_core.model.modules import find_modules

    m = helpers.model(tok, dtype=torch.float32)
    train(m, helpers.docs(tok), TrainOptions(lr=0.01, batch_size=6), checkpoint_dir=str(tmp_path))
    modules = find_modules(m, [], [], False, 0)
    norms = load_normalizers(str(tmp_path / "checkpoint-2" / OPTIMIZER_FILE), m, modules, kind="adam")
    assert set(norms) == {mod.name for mod in modules}
    assert all(torch.isfinite(n.scale).all() and (n.scale > 0).all() for n in norms.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_matches_cpu(tok):
    docs = helpers.docs(tok)
    opts = TrainOptions(lr=0.01, batch_size=4, epochs=2)
    cpu = helpers.model(tok)
    gpu = helpers.model(tok).cuda()
    train(cpu, docs, opts)
    train(gpu, docs, opts)
    for (name, x), y in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        torch.testing.assert_close(x, y.cpu(), rtol=1e-7, atol=1e-9, msg=name)
