"""Muon in the trainer against references written here from the equations of Jordan et al. 2024 (Newton-
Schulz orthogonalisation of the Nesterov momentum) and Liu et al. 2025 (the 0.2 sqrt(max(rows, cols)) scale)."""

from __future__ import annotations

import copy

import torch

from bergson_core.config.eval import TrainOptions
from bergson_core.train.muon import hidden_matrices, newton_schulz
from bergson_core.train.trainer import train
from tests.eval import helpers

A, B, C = 3.4445, -4.7750, 2.0315


def reference_orthogonalise(m: torch.Tensor) -> torch.Tensor:
    """Each Newton-Schulz step maps X = U S V^T to U (a S + b S^3 + c S^5) V^T: the iteration acts on the
    singular values of M / |M|_F alone, so the result is U p5(s) V^T from the SVD of M."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    s = s / (m.norm() + 1e-7)
    for _ in range(5):
        s = A * s + B * s**3 + C * s**5
    return u @ torch.diag(s) @ vh


def test_newton_schulz_acts_on_the_singular_values():
    gen = torch.Generator().manual_seed(0)
    for shape in [(6, 10), (10, 6), (8, 8)]:
        m = torch.randn(*shape, generator=gen, dtype=torch.float64)
        got = newton_schulz(m)
        torch.testing.assert_close(got, reference_orthogonalise(m), rtol=1e-10, atol=1e-12)
        sv = torch.linalg.svdvals(got)
        assert 0.5 < float(sv.min()) and float(sv.max()) < 1.3  # roughly orthogonal, as the paper intends


def test_trainer_steps_equal_the_reference():
    """Three Muon steps of the trainer equal a loop written from the equations: hidden weight matrices by
    Muon, every other parameter by torch.optim.AdamW, both on the same step gradients."""
    tok = helpers.tokenizer()
    docs = helpers.docs(tok, helpers.TEXTS[:6])
    model = helpers.model(tok, dtype=torch.float64)
    ref = copy.deepcopy(model)
    opts = TrainOptions(optimizer="muon", lr=0.02, momentum=0.9, weight_decay=0.1, epochs=3, batch_size=6,
                        schedule="constant", train_loss="mean")
    train(model, docs, opts, pad_id=0)

    from bergson_core.data.batching import collate
    from bergson_core.model.loss import document_losses

    matrices = hidden_matrices(ref)
    assert matrices and all(".h." in n for n in matrices)  # the body's linears, not embeddings or the head
    params = dict(ref.named_parameters())
    others = [p for n, p in params.items() if n not in matrices]
    adam = torch.optim.AdamW(others, lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                             weight_decay=opts.weight_decay)
    buffers = {n: torch.zeros_like(params[n]) for n in matrices}
    ids, mask, labels = collate(docs, 0, "cpu")
    for _ in range(3):
        loss = document_losses(ref(input_ids=ids, attention_mask=mask).logits, labels, "mean").sum() / 6
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        with torch.no_grad():
            for n in matrices:
                w, g = params[n], grads[n]
                buffers[n] = opts.momentum * buffers[n] + g
                o = reference_orthogonalise(g + opts.momentum * buffers[n])
                w.mul_(1 - opts.lr * opts.weight_decay).sub_(opts.lr * 0.2 * max(w.shape) ** 0.5 * o)
        for p in others:
            p.grad = grads[[n for n in params if params[n] is p][0]]
        adam.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, params[n], rtol=1e-9, atol=1e-12, msg=n)
    assert any((p - q).abs().max() > 1e-3 for p, q in zip(model.parameters(), helpers.model(tok).parameters()))
