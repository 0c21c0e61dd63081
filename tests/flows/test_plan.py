"""`bergson plan` / `build --dry-run`: the documents, tokens, shards and store bytes it announces are
those the build then reports (exactly, also for an append, and the bytes when tokens are sampled),
nothing is written, the cost follows from the time and the price, and the dashboard gets the plan
as an artifact."""

from __future__ import annotations

import os

import pytest

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.plan import plan_build, shard_bytes
from bergson_core.index.store import encode_grads

from .conftest import corpus_texts, write_jsonl


def _cfg(ws, index, dataset, **kw) -> BuildConfig:
    opts = {"index": str(index), "model": ws["model"], "dataset": dataset, "shard_size": 7, "projection_dim": 4,
            "id_column": "id", "batch_tokens": 256, "progress": False, "calibration_documents": 4}
    return BuildConfig(**{**opts, **kw})


@pytest.mark.parametrize("n,width,dtype", [(1, 3, "float16"), (7, 1, "float32"), (13, 65, "float16"),
                                           (1000, 1024, "float32")])
def test_shard_bytes_is_the_encoded_size(n, width, dtype):
    ids = [f"doc-{i * 37}" for i in range(n)]
    import numpy as np

    want = len(encode_grads(5, ids, list(range(n)), np.ones((n, width)), dtype)[0])
    assert shard_bytes(5, ids, width, dtype) == want


def test_plan_counts_equal_the_build_and_append(prefect_api, workspace, tmp_path):
    from prefect.artifacts import Artifact

    from flows.build import build_index
    from flows.plan import plan

    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(corpus_texts(24))]
    source = write_jsonl(tmp_path / "c.jsonl", rows[:17])
    index = tmp_path / "idx"
    cfg = _cfg(workspace, index, source, price_per_hour=3.6)
    p = plan(cfg)
    assert not os.path.exists(index)  # a plan writes nothing
    assert Artifact.get(f"plan-{cfg.spec_hash()}") is not None
    built = build_index(cfg)
    assert (p["documents"], p["tokens"], p["shards"], p["bytes"]) == (
        built["documents"], built["tokens"], built["shards_computed"], built["bytes"])
    assert p["tokens_exact"] and p["seconds"] > 0 and p["cost"] == pytest.approx(p["seconds"] / 1000)

    more = write_jsonl(tmp_path / "more.jsonl", rows[17:])
    acfg = _cfg(workspace, index, more, append=True)
    ap = plan_build(acfg)
    assert ap["documents"] == 7 and ap["shards"] == 1 and ap["shards_total"] == 4 and ap["cost"] is None
    done = [build_shard(acfg, *s) for s in prepare_build(acfg).missing()]  # the build's steps, without a flow
    assert (ap["tokens"], ap["bytes"], ap["shards"]) == (sum(d["tokens"] for d in done), sum(d["bytes"] for d in done),
                                                         len(done))

    # past --plan-sample documents: tokens from a sample of whole shards, bytes still exact
    sampled = plan_build(_cfg(workspace, tmp_path / "other", source, plan_sample=7))
    assert not sampled["tokens_exact"] and sampled["bytes"] == p["bytes"]
    assert 0.5 * p["tokens"] < sampled["tokens"] < 2 * p["tokens"]
