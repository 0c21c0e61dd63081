"""`bergson lissa` and `bergson arnoldi` end to end on a stored index of a tiny float64 GPT-2: the scores
equal g_q^T (H + lambda I)^-1 g_d from an explicit Hessian in the parameters' own coordinates (so the
index's row layout, Conv1D transposed, must match the curvature's), and through the CLI flow."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config.estimators import ArnoldiConfig, LissaConfig
from bergson_core.eval.scores import dense_scores
from bergson_core.methods.hessian.run import run

from .test_trak import MODULE, build_index


@pytest.fixture(scope="module")
def setup(trained_run):
    """The index (summed loss, full gradients of one module), the explicit mean Hessian [P, P] of the corpus
    w.r.t. that module's weight and the autograd gradients of corpus and queries, in parameter layout."""
    import torch.nn.functional as F
    from torch.func import functional_call
    from transformers import AutoModelForCausalLM, AutoTokenizer

    index = build_index(trained_run, 4, trained_run["root"] / "second-order-index")
    folder = str(trained_run["run"] / "checkpoint-4" / "model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    w0 = model.get_submodule(MODULE).weight.detach().clone()

    def loss(w, text):
        ids = torch.tensor([tok([text])["input_ids"][0]])
        logits = functional_call(model, {f"{MODULE}.weight": w}, (), {"input_ids": ids}).logits[0, :-1]
        return F.cross_entropy(logits, ids[0, 1:], reduction="sum")

    def grads(texts):
        return torch.stack([_grad(loss, w0, t) for t in texts])

    hessian = torch.autograd.functional.hessian(
        lambda x: sum(loss(x.reshape(w0.shape), t) for t in trained_run["texts"]) / len(trained_run["texts"]),
        w0.reshape(-1), vectorize=True)
    return {"index": index, "H": hessian, "g": grads(trained_run["texts"]), "gq": grads(trained_run["query_texts"])}


def _grad(loss, w0, text):
    w = w0.clone().requires_grad_(True)
    return torch.autograd.grad(loss(w, text), w)[0].reshape(-1)


def common(run, setup, out, **kw) -> dict:
    return dict(index=setup["index"], queries=run["queries"], output=str(out), device="cpu", hessian="true",
                damping_mode="absolute", curvature_batch=4, **kw)


def test_lissa_scores_equal_the_explicit_inverse(trained_run, setup, tmp_path):
    h = setup["H"]
    eig = torch.linalg.eigvalsh(h)
    damping = 0.5 * float(eig.max()) + max(0.0, -float(eig.min()))
    cfg = LissaConfig(**common(trained_run, setup, tmp_path, damping=damping), depth=100,
                      scale=1.05 * (float(eig.max()) + damping))
    summary = run(cfg, "lissa")
    assert summary["converged"] and summary["relative_update_last"] < 1e-8
    want = torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=h.dtype), setup["gq"].T).T @ setup["g"].T
    got = dense_scores(summary["output"], 2, 8)
    assert np.abs(want.numpy()).max() > 1e-3
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_arnoldi_scores_equal_the_explicit_subspace_inverse(trained_run, setup, tmp_path):
    h = setup["H"]
    eig, vec = torch.linalg.eigh(h)
    top = eig.abs().argsort(descending=True)[:3]
    u, lam = vec[:, top], eig[top]
    cfg = ArnoldiConfig(**common(trained_run, setup, tmp_path, damping=0.0), iterations=60, rank=3)
    summary = run(cfg, "arnoldi")
    np.testing.assert_allclose(summary["eigenvalues"], lam.numpy(), rtol=1e-7)
    want = ((setup["gq"] @ u) / lam) @ (setup["g"] @ u).T
    got = dense_scores(summary["output"], 2, 8)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_lissa_cli_flow_and_a_user_mistake(trained_run, setup, tmp_path, prefect_api):
    import subprocess
    import sys

    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    args = ["lissa", setup["index"], "--queries", trained_run["queries"], "--output", str(tmp_path / "cli"),
            "--device", "cpu", "--hessian", "ggn", "--depth", "20", "--no-progress"]
    done = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LiSSA (ggn" in done.stdout and (tmp_path / "cli" / "topk.parquet").exists()
    bad = subprocess.run([exe, *args[:4], "--query-text-column", "body", *args[4:]], check=False,
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "body" in bad.stderr, bad.stderr
