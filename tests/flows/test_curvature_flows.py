"""The curvature flows and commands: `fit` against the plain library map/reduce, reruns that reuse
every stored statistic, TrackStar against an independent numpy computation and invariant to batch
sizes and shard counts, `bergson ekfac` against an explicit EK-FAC computation, and refusals."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bergson_core import curvature as C
from bergson_core.config import BuildConfig
from bergson_core.config.curvature import STRATEGY_NAMES, FitConfig, TrackstarConfig
from bergson_core.data.corpus import tokenize_rows
from bergson_core.index.build import build_shard, load_for_spec, open_corpus, prepare_build
from bergson_core.index.store import Index, grad_matrix, read_grads

from .test_cli_errors import _assert_user_error


def _build(ws, index, **kw) -> BuildConfig:
    """An index built with the plain library functions (the build flow has its own tests)."""
    opts = {"index": str(index), "model": ws["model"], "dataset": ws["corpus"], "id_column": "id", "shard_size": 5,
            "projection_dim": 4, "grad_dtype": "float32", "dtype": "float64", "progress": False}
    cfg = BuildConfig(**{**opts, **kw})
    plan = prepare_build(cfg)
    for shard, start, stop in plan.shards:
        build_shard(cfg, shard, start, stop)
    return cfg


def _adam_state(model_path: str, path: str, seed: int = 0) -> str:
    """A real torch Adam state_dict after two steps on a few texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for text in ("the apple and the river", "a violin near the candle again"):
        ids = torch.tensor([tok(text)["input_ids"]])
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    torch.save(opt.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def adam(workspace):
    return _adam_state(workspace["model"], str(workspace["root"] / "adam.pt"))


def _mtimes(folder) -> dict[str, int]:
    return {os.path.relpath(os.path.join(r, n), folder): os.stat(os.path.join(r, n)).st_mtime_ns
            for r, _, names in os.walk(folder) for n in names}


def _rand_rows(width: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, width))


def test_strategy_choices_match_the_registry():
    assert sorted(STRATEGY_NAMES) == sorted(C.STRATEGIES)


def test_fit_flow_equals_library_map_reduce_and_reuses_stats(prefect_api, workspace, tmp_path):
    from flows.fit import fit

    many = _build(workspace, tmp_path / "many")  # 5 shards
    one = _build(workspace, tmp_path / "one", shard_size=100)  # 1 shard
    fits = {}
    for cfg in (many, one):
        result = fit(FitConfig(index=cfg.index, strategy="ekfac", progress=False))
        assert result["refitted"] and [p["kind"] for p in result["passes"]] == ["kfac", "ekfac-lambda"]
        fits[cfg.index] = C.load_preconditioner(cfg.index, "ekfac", space=C.Space.of(cfg))
    assert result["passes"][0]["shards"] == 1 and fits[many.index].space == C.Space(4)

    # the plain library over all documents at once
    loaded, modules, corpus = load_for_spec(many)
    docs = tokenize_rows(corpus, 0, len(corpus), loaded.tokenizer, many.max_length, id_column="id")
    space = C.Space.of(many)
    kfac = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(loaded, modules, docs, space)})
    lam = C.lambda_partial_stats(loaded, modules, docs, kfac)
    direct = C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=kfac)
    rows = _rand_rows(sum(b.width for b in direct.blocks))
    want = C.apply(direct, rows)
    for got in fits.values():
        np.testing.assert_allclose(C.apply(got, rows), want, rtol=1e-8, atol=1e-12 * np.abs(want).max())
        for b in direct.blocks:  # corrected eigenvalues are sign-free: compare them directly
            np.testing.assert_allclose(got.tensor(b.name, "Lambda"), direct.tensor(b.name, "Lambda"), rtol=1e-8)

    # a rerun computes nothing and rewrites nothing
    before = _mtimes(tmp_path / "many")
    again = fit(FitConfig(index=many.index, strategy="ekfac", progress=False))
    assert not again["refitted"] and all(p["computed"] == 0 for p in again["passes"])
    assert _mtimes(tmp_path / "many") == before
    # a deleted partial is the only thing recomputed, and the fit is unchanged
    lam_dir = again["passes"][1]["dir"]
    os.remove(tmp_path / "many" / "stats" / lam_dir / "shard-00002.json")
    third = fit(FitConfig(index=many.index, strategy="ekfac", progress=False))
    assert [p["computed"] for p in third["passes"]] == [0, 1]
    assert third["fingerprint"] == again["fingerprint"]


def _cosine_reference(index: str, query_file: str, lam_target: int, damping: float = 0.1) -> np.ndarray:
    """TrackStar from the stored rows with numpy only: unit rows, per-module covariances of corpus and
    queries, lambda where the pooled spectra cross, H^-1/2 (relative damping) on both sides, cosine."""
    ix = Index(index)
    meta = ix.meta()
    d = np.concatenate([grad_matrix(t) for _, t in ix.iter_shards()]).astype(np.float64)
    q = grad_matrix(read_grads(query_file)).astype(np.float64)
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ud, uq = unit(d), unit(q)
    cols = [(m["offset"], m["offset"] + m["width"]) for m in meta["modules"]]
    hc = [ud[:, a:b].T @ ud[:, a:b] / len(ud) for a, b in cols]
    hq = [uq[:, a:b].T @ uq[:, a:b] / len(uq) for a, b in cols]
    ec = np.sort(np.concatenate([np.linalg.eigvalsh(h) for h in hc]).clip(0))[::-1]
    eq = np.sort(np.concatenate([np.linalg.eigvalsh(h) for h in hq]).clip(0))[::-1]
    rank = min((eq > 1e-12 * eq[0]).sum(), (ec > 1e-12 * ec[0]).sum())
    k = max(0, min(lam_target, rank) - 1)
    lam = ec[k] / (eq[k] + ec[k])
    pd, pq_ = np.zeros_like(d), np.zeros_like(q)
    for (a, b), c, h in zip(cols, hc, hq):
        e, vec = np.linalg.eigh(lam * h + (1 - lam) * c)
        e = e.clip(0)
        f = (e + damping * e.mean()) ** -0.5
        pd[:, a:b] = ((d[:, a:b] @ vec) * f) @ vec.T
        pq_[:, a:b] = ((q[:, a:b] @ vec) * f) @ vec.T
    return unit(pq_) @ unit(pd).T  # [Q, N]


def _scores(path) -> dict[tuple[int, int], float]:
    t = pq.read_table(path).to_pandas()
    return {(int(r.query_index), int(r.doc_index)): float(r.score) for r in t.itertuples()}


def test_trackstar_invariant_to_batches_and_shards_and_equal_to_numpy(prefect_api, workspace, adam, tmp_path):
    from flows.trackstar import trackstar

    results = []
    for i, (shard_size, batch_tokens) in enumerate([(5, 8192), (24, 16), (7, 40)]):
        cfg = TrackstarConfig(index=str(tmp_path / f"ts{i}"), model=workspace["model"], dataset=workspace["corpus"],
                              queries=workspace["queries"], id_column="id", optimizer_state=adam, dtype="float64",
                              grad_dtype="float32", shard_size=shard_size, batch_tokens=batch_tokens,
                              top_k=24, target_downweight_components=3, progress=False)
        result = trackstar(cfg)
        assert result["fit"]["mix_lambda"] is not None and result["preconditioner"]["both_sides"]
        results.append((cfg, _scores(result["output"])))
    cfg0, first = results[0]
    assert len(first) == 2 * 24
    for _, other in results[1:]:
        assert other.keys() == first.keys()
        # cosines are scored in float32: equal to float32 rounding
        np.testing.assert_allclose([other[k] for k in first], list(first.values()), rtol=0, atol=2e-6)
    meta = Index(cfg0.index).meta()
    assert meta["spec"]["optimizer_state"] == adam and len(meta["spec"]["optimizer_state_sha256"]) == 16
    ref = _cosine_reference(cfg0.index, os.path.join(cfg0.output_url(), "query_grads.arrow"), 3)
    for (qi, di), s in first.items():
        assert abs(s - ref[qi, di]) <= 2e-6, (qi, di, s, ref[qi, di])
    # the rerun reuses the index, the statistics, the fit and the query gradients
    before = _mtimes(cfg0.index)
    again = trackstar(cfg0)
    assert again["build"]["shards_computed"] == 0 and not again["fit"]["refitted"]
    changed = {k for k, v in _mtimes(cfg0.index).items() if before.get(k) != v}
    assert changed <= {os.path.relpath(again["output"], cfg0.index)}, changed


def _explicit_ekfac_scores(loaded, modules, docs, qdocs, damping: float) -> np.ndarray:
    """EK-FAC influence written out with plain torch autograd and numpy, none of the library's
    hooks, statistics or preconditioners: per token, each module's input a_t (plus a 1 for a bias)
    and output gradient g_t; the Kronecker factors A = sum_t a_t a_t^T, S = sum_t g_t g_t^T (their
    scale does not matter: only their eigenvectors are used); per-document gradients G_n = sum_t
    g_t a_t^T; Lambda = mean_n (Q_S^T G_n Q_A)^2; score = <Q_S [(Q_S^T G_q Q_A) / (Lambda + d)] Q_A^T, G_d>."""
    model = loaded.model

    def per_token(doc):
        acts, grads, handles = {}, {}, []
        for m in modules:
            def hook(mod, inputs, output, name=m.name):
                acts[name] = inputs[0][0].detach()
                output.register_hook(lambda g: grads.__setitem__(name, g[0].detach()))
            handles.append(model.get_submodule(m.name).register_forward_hook(hook))
        ids = torch.tensor([doc.input_ids])
        with torch.enable_grad():
            emb = model.get_input_embeddings()(ids).requires_grad_(True)
            logits = model(inputs_embeds=emb).logits[0]
            labels = torch.tensor(doc.labels[1:])
            keep = labels != -100
            loss = torch.nn.functional.cross_entropy(logits[:-1][keep], labels[keep], reduction="sum")
            torch.autograd.backward(loss, inputs=[emb])
        for h in handles:
            h.remove()
        out = {}
        for m in modules:
            a = acts[m.name]
            if m.has_bias:
                a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
            out[m.name] = (a.numpy(), grads[m.name].numpy())  # [T, I], [T, O]
        return out

    corpus = [per_token(d) for d in docs]
    queries = [per_token(d) for d in qdocs]
    scores = np.zeros((len(qdocs), len(docs)))
    for m in modules:
        a_all = np.concatenate([c[m.name][0] for c in corpus])
        g_all = np.concatenate([c[m.name][1] for c in corpus])
        q_a = np.linalg.eigh(a_all.T @ a_all)[1]
        q_s = np.linalg.eigh(g_all.T @ g_all)[1]
        grad = lambda t: t[m.name][1].T @ t[m.name][0]  # noqa: E731  G = sum_t g_t a_t^T [O, I]
        rot_d = np.stack([q_s.T @ grad(c) @ q_a for c in corpus])  # [N, O, I]
        lam = (rot_d ** 2).mean(0)
        rot_q = np.stack([q_s.T @ grad(c) @ q_a for c in queries])
        # the rotation is orthogonal: <Q_S X Q_A^T, G_d> = <X, Q_S^T G_d Q_A>
        scores += np.einsum("qoi,noi->qn", rot_q / (lam + damping), rot_d)
    return scores


def test_ekfac_cli_equals_an_explicit_computation(run_cli, workspace, tmp_path):
    index = tmp_path / "ek"
    proc = run_cli("ekfac", index, "--model", workspace["model"], "--dataset", workspace["corpus"], "--queries",
                   workspace["queries"], "--id-column", "id", "--dtype", "float64", "--top-k", "24", "--damping",
                   "0.01", "--damping-mode", "absolute", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "mode: exact" in proc.stdout
    table = _scores(index / "scores" / "queries-ekfac" / "topk.parquet")

    cfg = BuildConfig(index=str(index), model=workspace["model"], dataset=workspace["corpus"], projection_dim=0,
                      dtype="float64", device="cpu")
    loaded, modules, corpus = load_for_spec(cfg)
    docs = tokenize_rows(corpus, 0, len(corpus), loaded.tokenizer, cfg.max_length)
    qset = open_corpus(workspace["queries"], "train", {})
    qdocs = tokenize_rows(qset, 0, len(qset), loaded.tokenizer, cfg.max_length)
    want = _explicit_ekfac_scores(loaded, modules, docs, qdocs, damping=0.01)  # [Q, N]
    assert len(table) == 2 * 24
    scale = np.abs(want).max()
    for (qi, di), s in table.items():
        assert abs(s - want[qi, di]) <= 1e-8 * scale, (qi, di, s, want[qi, di])


def test_score_refuses_a_preconditioner_of_another_projection(run_cli, prefect_api, workspace, tmp_path):
    from flows.fit import fit

    cfg = _build(workspace, tmp_path / "idx")
    fit(FitConfig(index=cfg.index, strategy="kfac", full_space=True, name="kfac-full", progress=False))
    proc = run_cli("score", cfg.index, "--queries", workspace["queries"], "--preconditioner", "kfac-full")
    _assert_user_error(proc, "kfac-full", "full gradients", "p=4", "bergson fit")
    assert not (tmp_path / "idx" / "scores").exists()


def test_optimizer_state_of_another_model_is_refused(run_cli, workspace, tmp_path):
    from bergson_core.model.tiny import save_tiny

    other = save_tiny(str(tmp_path / "other"), "llama", ["a b c d e f"], hidden=16, layers=1)
    state = _adam_state(other, str(tmp_path / "other-adam.pt"))
    index = tmp_path / "ts"
    proc = run_cli("trackstar", index, "--model", workspace["model"], "--dataset", workspace["corpus"],
                   "--queries", workspace["queries"], "--optimizer-state", state)
    _assert_user_error(proc, "does not belong to this model")
    assert not index.exists() or not [f for _, _, fs in os.walk(index) for f in fs]
