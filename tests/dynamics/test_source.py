"""SOURCE: the segment algebra against a dense computation (torch.linalg.matrix_exp on explicit
matrices, autograd gradients), and its two limits: EK-FAC influence (eta -> infinity, one segment)
and TracIn (eta -> 0)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config.source import SourceConfig
from bergson_core.errors import ConfigError
from bergson_core.eval.scores import dense_scores
from bergson_core.methods.source.run import run_source

from . import helpers

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn", "the fox jumps over the dog",
         "rain falls on green hills", "we read old books"]
QUERIES = ["the cat sat in the park", "birds sing on the mat"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny float64 GPT-2 trained with AdamW for 6 steps, checkpoints at 2, 4 and 6."""
    from bergson_core.config.eval import TrainOptions
    from bergson_core.model.tiny import tiny_model
    from bergson_core.train.trainer import train
    from tests.core.helpers import write_jsonl
    from tests.eval import helpers as eh

    root = tmp_path_factory.mktemp("source")
    tok = eh.tokenizer(QUERIES)
    model = tiny_model("gpt2", len(tok), seed=0, dtype=torch.float64, hidden=8, layers=1, heads=2).requires_grad_(True)
    opts = TrainOptions(optimizer="adamw", lr=0.02, epochs=3, batch_size=3, checkpoint_every=2,
                        schedule="linear", warmup_steps=1, train_loss="sum")
    train(model, eh.docs(tok, TEXTS), opts, pad_id=0, checkpoint_dir=str(root / "run"), tokenizer=tok)
    return {"root": root, "tok": tok, "opts": opts,
            "checkpoints": [str(root / "run" / f"checkpoint-{s}") for s in (2, 4, 6)],
            "corpus": write_jsonl(root / "corpus.jsonl", [{"text": t} for t in TEXTS]),
            "queries": write_jsonl(root / "queries.jsonl", [{"text": t} for t in QUERIES])}


def config(run, out, **kw) -> SourceConfig:
    fields = {"checkpoints": run["checkpoints"], "dataset": run["corpus"], "queries": run["queries"],
              "output": str(out), "dtype": "float64", "device": "cpu", "loss_reduction": "sum", "shard_size": 4,
              "progress": False}
    fields.update(kw)
    return SourceConfig(**fields)


# -- independent pieces of the reference ---------------------------------------------------------
def layout_gradients(checkpoint: str, texts: list[str], modules: list[dict]) -> torch.Tensor:
    """Autograd per-document gradients [N, D] at a checkpoint, in the index's row layout (each
    module's weight as out x in, GPT-2's Conv1D transposed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.path.join(checkpoint, "model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    params = dict(model.named_parameters())
    flat = helpers.autograd_gradients(model, tok, texts)  # body weights in named_parameters order
    names = [n for n, p in params.items() if any(p is q for q in helpers.body_weights(model))]
    parts, offset = {}, 0
    for n in names:
        p = params[n]
        parts[n[: -len(".weight")]] = flat[:, offset:offset + p.numel()].reshape(-1, *p.shape)
        offset += p.numel()
    cols = []
    for m in modules:
        g = parts[m["name"]]
        cols.append((g.transpose(1, 2) if m["transposed"] else g).reshape(len(texts), -1))
    return torch.cat(cols, dim=1)


def adam_p(checkpoint: str, modules: list[dict], opts) -> torch.Tensor:
    """1 / (sqrt(v / (1 - beta2^step)) + eps) [D] read straight from the checkpoint's files."""
    import json

    from safetensors.torch import load_file

    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        step = json.load(f)["step"]
    state = load_file(os.path.join(checkpoint, "optimizer.safetensors"))
    cols = []
    for m in modules:
        v = state[m["name"] + ".weight.exp_avg_sq"]
        v = v.T if m["transposed"] else v
        cols.append((1.0 / ((v / (1 - opts.beta2 ** step)).sqrt() + opts.eps)).reshape(-1))
    return torch.cat(cols)


def expm(a: np.ndarray) -> np.ndarray:
    """Matrix exponential by scaling and squaring (no eigendecomposition involved)."""
    return torch.linalg.matrix_exp(torch.from_numpy(a)).numpy()


def test_segment_algebra_matches_dense_matrix_exponentials(run, tmp_path):
    from bergson_core import curvature as C
    from bergson_core.index.store import Index

    # segments [checkpoint-2, checkpoint-4], [checkpoint-6]; H + d I with d = 0.1 x mean eigenvalue
    cfg = config(run, tmp_path / "out", segments=2, damping=0.1)
    summary = run_source(cfg)
    assert summary["variant"] == "adam" and summary["segments"] == [[0, 1], [2]]
    meta = Index(cfg.index_url(0)).meta()
    modules = meta["modules"]
    n = len(TEXTS)
    G = [layout_gradients(c, TEXTS, modules) for c in run["checkpoints"]]
    gq = layout_gradients(run["checkpoints"][-1], QUERIES, modules).numpy()
    P = [adam_p(c, modules, run["opts"]) for c in run["checkpoints"]]
    # eta_l from the schedule itself: the sum of the step learning rates in the segment
    from bergson_core.train.trainer import learning_rate

    lr = [learning_rate(s, 6, run["opts"]) for s in range(6)]
    etas = [sum(lr[:4]), sum(lr[4:])]
    np.testing.assert_allclose(summary["segment_learning_rates"], etas, rtol=1e-12)

    want = np.zeros((len(QUERIES), n))
    v = gq.copy()
    for seg, members in reversed(list(enumerate([[0, 1], [2]]))):
        fit = C.load_preconditioner(os.path.join(str(tmp_path / "out"), "segments"), f"segment-{seg}")
        p = torch.stack([P[k] for k in members]).mean(0).numpy()  # P of the segment
        gbar = torch.stack([G[k] for k in members]).mean(0).numpy()  # g_{d,l}
        u = np.zeros_like(v)
        new_v = np.zeros_like(v)
        for m in modules:
            sl = slice(m["offset"], m["offset"] + m["width"])
            q = np.kron(fit.tensor(m["name"], "Q_S").numpy(), fit.tensor(m["name"], "Q_A").numpy())
            lam = fit.tensor(m["name"], "Lambda").numpy().reshape(-1)
            # the corrected eigenvalues are the Fisher diagonal of the P^1/2-rescaled autograd gradients
            rescaled = np.concatenate([G[k].numpy()[:, sl] * np.sqrt(p[sl]) for k in members])
            np.testing.assert_allclose(lam, ((rescaled @ q) ** 2).mean(0), rtol=1e-5, atol=1e-7 * lam.max())
            h = (q * lam) @ q.T + 0.1 * lam.mean() * np.eye(len(lam))  # H~ + d I of the segment, dense
            w = h.shape[0]
            s_mat = expm(-etas[seg] * h)
            aug = np.zeros((2 * w, 2 * w))
            aug[:w, :w], aug[:w, w:] = -etas[seg] * h, etas[seg] * np.eye(w)
            r_mat = expm(aug)[:w, w:]  # (I - exp(-eta H~)) H~^-1 by Van Loan's block exponential
            ps = np.sqrt(p[sl])
            u[:, sl] = ((v[:, sl] * ps) @ r_mat * ps) / n
            new_v[:, sl] = ((v[:, sl] * ps) @ s_mat) / ps
        want += u @ gbar.T
        v = new_v
    got = dense_scores(summary["output"], len(QUERIES), n)
    assert np.abs(want).max() > 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_one_segment_with_a_long_horizon_is_ekfac_influence(run, tmp_path):
    """eta -> infinity: (1 - exp(-eta lambda)) / lambda -> 1 / lambda, EK-FAC's undamped inverse."""
    from bergson_core import curvature as C
    from bergson_core.config.curvature import FitConfig
    from bergson_core.curvature.run import (
        fit_and_save,
        lambda_pass,
        plan_fit,
        reduce_pass,
        stats_shard,
    )
    from bergson_core.index.store import Index, grad_matrix, read_grads

    last = run["checkpoints"][-1:]
    cfg = config(run, tmp_path / "out", checkpoints=last, optimizer="sgd", segment_learning_rates=[1e30])
    summary = run_source(cfg)
    # the library's own EK-FAC of that checkpoint's index (`bergson fit --strategy ekfac`, rows pass)
    index = cfg.index_url(0)
    fcfg = FitConfig(index=index, strategy="ekfac", stats_source="rows", dtype="float64", device="cpu",
                     progress=False)
    plan = plan_fit(fcfg)
    totals = {}
    for p in plan["passes"]:
        for shard, start, stop in p["shards"]:
            stats_shard(fcfg, p, shard, start, stop)
        totals[p["kind"]] = reduce_pass(fcfg, p)
    fit_and_save(fcfg, "kfac", {"kfac": totals["kfac"]}, "basis")
    lp = lambda_pass(fcfg, plan, "basis")
    for shard, start, stop in lp["shards"]:
        stats_shard(fcfg, lp, shard, start, stop)
    fit_and_save(fcfg, "ekfac", {"ekfac-lambda": reduce_pass(fcfg, lp)}, "ekfac", base="basis")
    ekfac = C.load_preconditioner(index, "ekfac")
    # undamped influence g_q^T F^-1 g_d in float64 (its smallest eigenvalues are ~1e-19: float32
    # rounding of a preconditioned query would swamp the comparison)
    query = np.asarray(grad_matrix(read_grads(os.path.join(str(tmp_path / "out"), "queries", "final.arrow"))),
                       dtype=np.float64)
    ix = Index(index)
    docs = np.concatenate([np.asarray(grad_matrix(ix.open_shard(m["shard"])), dtype=np.float64) for m in ix.manifests()])
    influence = C.apply(ekfac, query, C.ApplyOptions(damping=0.0, damping_mode="absolute")) @ docs.T
    got = dense_scores(summary["output"], len(QUERIES), len(TEXTS)) * len(TEXTS)
    assert np.abs(influence).max() > 1e-6
    np.testing.assert_allclose(got, influence, rtol=1e-6, atol=1e-9 * np.abs(influence).max())


def test_short_segments_are_tracin(run, tmp_path):
    """eta -> 0: R = eta I and S = I, so SOURCE x N is TracIn with the segments' learning rates and
    the final query gradient: sum_k eta_k <g_q(theta_T), g_d(theta_k)>."""
    from bergson_core.index.store import Index

    etas = [2e-9, 5e-9, 3e-9]
    cfg = config(run, tmp_path / "out", optimizer="sgd", segment_learning_rates=etas)
    got = dense_scores(run_source(cfg)["output"], len(QUERIES), len(TEXTS)) * len(TEXTS)
    modules = Index(cfg.index_url(0)).meta()["modules"]
    gq = layout_gradients(run["checkpoints"][-1], QUERIES, modules).numpy()
    want = np.zeros((len(QUERIES), len(TEXTS)))
    for k, eta in enumerate(etas):
        want += eta * gq @ layout_gradients(run["checkpoints"][k], TEXTS, modules).numpy().T
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_checkpoints_are_taken_in_training_order_whatever_order_they_come_in(run, tmp_path):
    from bergson_core.methods.source.run import plan_source

    shuffled = [run["checkpoints"][k] for k in (2, 0, 1)]
    plan = plan_source(config(run, tmp_path / "out", checkpoints=shuffled, segments=2))
    assert [c["step"] for c in plan["checkpoints"]] == [2, 4, 6] and plan["groups"] == [[0, 1], [2]]


def test_a_rerun_reuses_every_step_and_gives_the_same_scores(run, tmp_path):
    from bergson_core.methods.source.run import plan_source, segment_fit

    cfg = config(run, tmp_path / "out", segments=2)
    first = dense_scores(run_source(cfg)["output"], len(QUERIES), len(TEXTS))
    plan = plan_source(cfg)
    assert all(segment_fit(cfg, plan, s)["skipped"] for s in range(2))
    again = dense_scores(run_source(cfg)["output"], len(QUERIES), len(TEXTS))
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("change, message", [
    ({"checkpoints": "twice"}, "both at step 6"),
    ({"segments": 4}, "lower --segments"),
    ({"optimizer": "adam", "projection_dim": 4}, "--projection-dim 0"),
    ({"segment_learning_rates": [1.0]}, "1 segment learning rates for 3 segments"),
    ({"optimizer_state": "x"}, "drop --optimizer-state"),
])
def test_bad_setups_are_refused_before_any_work(run, tmp_path, change, message):
    from bergson_core.methods.source.run import plan_source

    if change.get("checkpoints") == "twice":
        change = {"checkpoints": run["checkpoints"] + run["checkpoints"][-1:]}
    cfg = config(run, tmp_path / "out", **change)
    with pytest.raises(ConfigError, match=message):
        plan_source(cfg)
    assert not (tmp_path / "out").exists()
