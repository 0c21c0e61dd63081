"""TRAK: the closed form on linear regression, the language-model run against autograd, the ensemble mean."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config import BuildConfig
from bergson_core.config.curvature import DampingOptions
from bergson_core.config.estimators import TrakConfig
from bergson_core.eval.scores import dense_scores
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.methods.trak.kernel import tau
from bergson_core.methods.trak.run import run_trak

MODULE = "transformer.h.0.attn.c_proj"  # one 16 x 16 module: a 256 x 256 kernel


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_linear_regression_equals_the_leave_one_out_closed_form(lam):
    """For (ridge) least squares, f = w^T x, phi = x and Q_i = y_i - f_i (= -dL/df for L = (y - f)^2 / 2):
    tau(q, i) = (f_q(w) - f_q(w without i)) (1 - h_ii), h_ii = x_i^T (X^T X + lam I)^-1 x_i, from exact refits."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(5, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(30, generator=gen,
                                                                                   dtype=torch.float64)
    xq = torch.randn(4, 5, generator=gen, dtype=torch.float64)

    def fit(keep):
        a = x[keep]
        return torch.linalg.solve(a.T @ a + lam * torch.eye(5, dtype=torch.float64), a.T @ y[keep])

    w = fit(torch.arange(30))
    got = tau(xq, x, y - x @ w, DampingOptions(damping=lam, damping_mode="absolute"))  # [4, 30]
    lev = torch.einsum("nd,de,ne->n", x, torch.linalg.inv(x.T @ x + lam * torch.eye(5, dtype=torch.float64)), x)
    want = torch.stack([xq @ (w - fit(torch.tensor([j for j in range(30) if j != i]))) for i in range(30)], 1)
    torch.testing.assert_close(got, want * (1 - lev), rtol=1e-9, atol=1e-12)


def build_index(run, step: int, path, seed: int = 0) -> str:
    cfg = BuildConfig(index=str(path), model=str(run["run"] / f"checkpoint-{step}" / "model"), dataset=run["corpus"],
                      dtype="float64", device="cpu", projection_dim=0, include=[MODULE], grad_dtype="float32",
                      loss_reduction="sum", shard_size=3, projection_seed=seed, progress=False)
    plan = prepare_build(cfg)
    for shard, start, stop in plan.missing():
        build_shard(cfg, shard, start, stop)
    return str(path)


@pytest.fixture(scope="module")
def indexes(trained_run):
    return {step: build_index(trained_run, step, trained_run["root"] / f"trak-index-{step}") for step in (2, 4)}


def reference(run, step: int, lam: float) -> np.ndarray:
    """g_q^T (sum_i g_i g_i^T / (1 - p_i)^2 + lam I)^-1 g_i / (1 - p_q), p = exp(-summed loss), by autograd."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(run["run"] / f"checkpoint-{step}" / "model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    weight = model.get_submodule(MODULE).weight

    def grads_and_p(texts):
        rows, ps = [], []
        for text in texts:
            ids = torch.tensor([tok([text])["input_ids"][0]])
            logits = model(input_ids=ids).logits[0, :-1]
            loss = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
            rows.append(torch.autograd.grad(loss, weight)[0].reshape(-1))
            ps.append(torch.exp(-loss.detach()))
        return torch.stack(rows), torch.stack(ps)

    g, p = grads_and_p(run["texts"])
    gq, pq = grads_and_p(run["query_texts"])
    phi = g / (1 - p)[:, None]
    kernel = phi.T @ phi + lam * torch.eye(g.shape[1], dtype=torch.float64)
    return (torch.linalg.solve(kernel, gq.T).T @ g.T / (1 - pq)[:, None]).numpy()


def config(run, indexes, tmp_path, **kw) -> TrakConfig:
    return TrakConfig(indexes=indexes, queries=run["queries"], output=str(tmp_path), device="cpu",
                      damping=0.05, damping_mode="absolute", block_rows=2, **kw)


def test_one_model_equals_the_autograd_formula(trained_run, indexes, tmp_path):
    got = dense_scores(run_trak(config(trained_run, [indexes[4]], tmp_path))["output"], 2, 8)
    want = reference(trained_run, 4, 0.05)
    assert np.abs(want).max() > 1e-3 and np.abs(want - want.mean()).max() > 1e-3  # a real, varied signal
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_ensemble_is_the_mean_of_the_models(trained_run, indexes, tmp_path):
    both = dense_scores(run_trak(config(trained_run, [indexes[2], indexes[4]], tmp_path / "both"))["output"], 2, 8)
    each = [dense_scores(run_trak(config(trained_run, [indexes[s]], tmp_path / str(s)))["output"], 2, 8)
            for s in (2, 4)]
    assert np.abs(each[0] - each[1]).max() > 1e-3 * np.abs(each[1]).max()  # the models disagree
    np.testing.assert_allclose(both, (each[0] + each[1]) / 2, rtol=1e-6, atol=1e-9 * np.abs(both).max())


def test_too_wide_an_index_is_refused(trained_run, indexes, tmp_path):
    from bergson_core.errors import ConfigError

    with pytest.raises(ConfigError, match="max-kernel-dim"):
        run_trak(config(trained_run, [indexes[4]], tmp_path, max_kernel_dim=100))
    assert not os.path.exists(tmp_path / "topk.parquet")


def test_output_gradient_is_the_logit_of_p():
    """The 1 - p correction: phi = -g / (1 - p) is the autograd gradient of f = log(p / (1 - p)), with p the
    probability of the label (here about 0.9, so the correction is far from 1)."""
    from bergson_core.methods.trak.kernel import output_gradients

    gen = torch.Generator().manual_seed(1)
    w = (3 * torch.randn(5, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    x = torch.randn(4, generator=gen, dtype=torch.float64)
    label = int(torch.argmax(w.detach() @ x))
    loss = torch.nn.functional.cross_entropy((w @ x)[None], torch.tensor([label]))
    p = torch.exp(-loss)
    assert 0.5 < float(p.detach()) < 0.999
    want = torch.autograd.grad(torch.log(p) - torch.log1p(-p), w, retain_graph=True)[0]
    g = torch.autograd.grad(loss, w)[0]
    got = output_gradients(g.reshape(1, -1), loss.detach()[None])[0]
    torch.testing.assert_close(got, want.reshape(-1), rtol=1e-10, atol=1e-12)


def test_cli_flow_equals_the_library(trained_run, indexes, tmp_path, prefect_api):
    """`bergson trak` (the Prefect flow, one task per model, in a subprocess) writes the library's scores; a
    user mistake is one line and exit 2."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = ["trak", "--indexes", indexes[2], indexes[4], "--queries", trained_run["queries"], "--output", str(out),
            "--device", "cpu", "--damping", "0.05", "--damping-mode", "absolute", "--no-progress"]
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    done = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lib = run_trak(config(trained_run, [indexes[2], indexes[4]], tmp_path / "lib"))
    np.testing.assert_allclose(dense_scores(str(out / "topk.parquet"), 2, 8), dense_scores(lib["output"], 2, 8),
                               rtol=1e-6)
    bad = subprocess.run([exe, *args[:-1], "--max-kernel-dim", "10"], check=False, capture_output=True, text=True,
                         timeout=300, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "max-kernel-dim" in bad.stderr
