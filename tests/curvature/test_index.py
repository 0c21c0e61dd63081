"""The curvature library on a real gradient index: layout from index.json, per-shard statistics
from stored rows written next to the shards, and a projected-space EK-FAC whose model-pass
statistics agree with the stored rows (the curvature hooks project exactly as the build does)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bergson_core import curvature as C
from bergson_core.config import BuildConfig
from bergson_core.data.corpus import tokenize_rows
from bergson_core.index.build import build_shard, load_for_spec, prepare_build
from bergson_core.index.store import grad_matrix
from bergson_core.model.tiny import save_tiny

from .tiny_setup import random_texts, rel_err

TEXTS = random_texts(14, seed=5)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("curv-index")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    save_tiny(str(root / "model"), "llama", TEXTS, seed=2, hidden=16, layers=1)
    cfg = BuildConfig(model=str(root / "model"), dataset=str(root / "corpus.jsonl"), index=str(root / "ix"),
                      projection_dim=4, include_bias=True, grad_dtype="float32", dtype="float64", device="cpu",
                      shard_size=5, batch_tokens=64, progress=False)
    plan = prepare_build(cfg)
    for shard, start, stop in plan.shards:
        build_shard(cfg, shard, start, stop)
    return cfg, plan.index


def test_statistics_per_index_shard(index):
    cfg, ix = index
    space, modules, blocks = C.index_layout(ix.meta())
    assert space == C.Space(4, "rademacher", 0, True)
    shards = []
    for manifest, table in ix.iter_shards():  # map: one partial per gradient shard
        partial = C.autocorr_partial_stats(grad_matrix(table), blocks, space, unit_normalize=True)
        C.save_stats(ix, partial, shard=manifest["shard"])
        shards.append(manifest["shard"])
    assert C.list_stats_shards(ix, "autocorr") == shards == [0, 1, 2]
    total = C.reduce_stats([C.load_stats(ix, "autocorr", i) for i in shards])
    C.save_stats(ix, total)  # the reduced total
    all_rows = np.concatenate([grad_matrix(t) for _, t in ix.iter_shards()])
    whole = C.autocorr_partial_stats(all_rows, blocks, space, unit_normalize=True)
    for k in whole.tensors:
        assert rel_err(total.tensors[k], whole.tensors[k]) <= 1e-12
    fit = C.fit_preconditioner("autocorr", {"autocorr": C.load_stats(ix, "autocorr")})
    C.save_preconditioner(ix, "trackstar", fit)
    back = C.load_preconditioner(ix, "trackstar", space=C.Space.of(ix.meta()["spec"]))
    out = C.apply(back, all_rows, C.ApplyOptions(power=-0.5))
    assert out.shape == all_rows.shape and np.isfinite(out).all()


def test_projected_ekfac_from_model_pass_and_stored_rows(index):
    cfg, ix = index
    space, _, _ = C.index_layout(ix.meta())
    loaded, modules, corpus = load_for_spec(cfg)
    docs = tokenize_rows(corpus, 0, len(corpus), loaded.tokenizer, cfg.max_length)
    kfac = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(loaded, modules, docs, space)})
    rows = np.concatenate([grad_matrix(t) for _, t in ix.iter_shards()])
    from_rows = C.rows_lambda_partial_stats(rows, kfac)
    from_model = C.lambda_partial_stats(loaded, modules, docs, kfac)
    for k in from_rows.tensors:  # float32 storage of the rows: agreement to float32 precision
        assert rel_err(from_model.tensors[k], from_rows.tensors[k]) <= 1e-5
    ekfac = C.fit_preconditioner("ekfac", {"ekfac-lambda": from_rows}, base=kfac)
    assert ekfac.space == C.Space.of(cfg)
