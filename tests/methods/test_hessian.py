"""Curvature-vector products through the model, LiSSA and Arnoldi against explicit float64 matrices of a
tiny GPT-2 (one tracked 16 x 16 module plus its bias: 272 parameters)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from bergson_core.data.batching import collate
from bergson_core.methods.hessian.arnoldi import arnoldi
from bergson_core.methods.hessian.lissa import lissa
from bergson_core.methods.hessian.operator import Layout, curvature_product
from bergson_core.model.loss import document_losses
from bergson_core.model.modules import find_modules
from tests.eval import helpers


@pytest.fixture(scope="module")
def tiny():
    tok = helpers.tokenizer()
    model = helpers.model(tok, dtype=torch.float64).requires_grad_(False)
    modules = find_modules(model, ["*attn.c_proj"], [], True, 0)
    layout = Layout.of(model, modules, torch.float64)
    docs = helpers.docs(tok, helpers.TEXTS[:6])
    ids, mask, labels = collate(docs, 0, "cpu")
    flat = layout.to_rows({k: p.detach() for k, p in layout.params.items()})

    def logits(x):
        return functional_call(model, layout.from_rows(x), (), {"input_ids": ids, "attention_mask": mask}).logits

    def loss(x):  # the mean over documents of each document's mean token loss
        return document_losses(logits(x), labels, "mean").mean()

    hessian = torch.autograd.functional.hessian(loss, flat, vectorize=True)  # [P, P]
    # GGN = J^T (d^2 L / dz^2) J, with the loss as a function of the logits z, from explicit Jacobians
    z = logits(flat).detach()
    jac = torch.autograd.functional.jacobian(logits, flat, vectorize=True).reshape(-1, flat.numel())  # [B*T*V, P]
    hz = torch.autograd.functional.hessian(
        lambda zz: document_losses(zz.reshape(z.shape), labels, "mean").mean(), z.reshape(-1), vectorize=True)
    ggn = jac.T @ hz @ jac
    return {"model": model, "layout": layout, "docs": docs, "true": hessian, "ggn": ggn}


def product(tiny, kind):
    return curvature_product(tiny["model"], tiny["layout"], tiny["docs"], 0, "mean", kind, batch_size=3)


@pytest.mark.parametrize("kind", ["true", "ggn"])
def test_products_equal_the_explicit_matrices(tiny, kind):
    v = torch.randn(3, tiny["layout"].width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = v @ tiny[kind]
    assert want.abs().max() > 1e-2
    torch.testing.assert_close(product(tiny, kind)(v), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["true", "ggn"])
def test_lissa_converges_to_the_damped_inverse(tiny, kind):
    h = tiny[kind]
    eig = torch.linalg.eigvalsh(h)
    damping = float(eig.max()) * 0.5 + max(0.0, -float(eig.min()))  # H + damping I positive, condition <= 5
    scale = 1.05 * (float(eig.max()) + damping)
    v = torch.randn(2, h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = product(tiny, kind)
    got = lissa(lambda j, x: op(x), v, depth=120, scale=scale, damping=damping)
    want = torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=torch.float64), v.T).T
    torch.testing.assert_close(got.x, want, rtol=1e-8, atol=1e-10 * float(want.abs().max()))
    assert got.updates[0] > 1e-2 > 1e-9 > got.updates[-1]  # the reported convergence


def test_arnoldi_eigenpairs_equal_eigh(tiny):
    h = tiny["true"]
    eig, vec = torch.linalg.eigh(h)
    order = eig.abs().argsort(descending=True)[:4]
    got_val, got_vec = arnoldi(lambda x: product(tiny, "true")(x), h.shape[0], iterations=80, rank=4)
    torch.testing.assert_close(got_val, eig[order], rtol=1e-8, atol=0.0)
    overlap = (got_vec @ vec[:, order]).abs().diagonal()  # eigenvectors up to sign
    torch.testing.assert_close(overlap, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-8)
