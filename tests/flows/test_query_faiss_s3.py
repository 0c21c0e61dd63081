"""`bergson query --faiss` as flows against the moto S3 server: the FAISS index is built over an
index in a bucket (one task per block of shards, then a merge), stored in the index folder, not
rebuilt by a second run, and its Flat answers equal the exact streaming answers."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from bergson_core.config import BuildConfig
from bergson_core.config.query import QueryConfig
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.scoring.query import QueryEngine
from flows.faiss_index import build_faiss
from flows.query import query

from .test_resume_and_s3 import s3_server  # noqa: F401 (the module's moto server fixture)


def test_faiss_query_on_s3_equals_exact(prefect_api, workspace, s3_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BERGSON_CACHE", str(tmp_path / "cache"))
    fs, opts = s3_server["fs"], s3_server["options"]
    cfg = BuildConfig(index="s3://bergson-test/qidx", dataset=workspace["corpus"], model=workspace["model"],
                      id_column="id", shard_size=5, grad_dtype="float32", device="cpu", progress=False,
                      storage_options=opts)
    for shard, start, stop in prepare_build(cfg).missing():
        build_shard(cfg, shard, start, stop)
    ask = QueryConfig(index=cfg.index, text=["the violin and the candle", "apple river"], top_k=4, bottom_k=2,
                      faiss="Flat", faiss_shards_per_task=2, output=str(tmp_path / "out"), storage_options=opts,
                      progress=False)
    got = query(ask)
    faiss_dir = got["faiss"].removeprefix("s3://")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(faiss_dir)) == ["index.faiss", "index.json", "trained.faiss"]
    again = build_faiss(ask)
    assert not again["built_now"] and again["faiss"] == got["faiss"] and again["blocks"] == 3
    exact = QueryEngine(ask.model_copy(update={"faiss": None})).ask(ask.text)
    a, b = (pq.read_table(r["output"]).to_pandas() for r in (got, exact))
    assert list(a.side) == list(b.side) and list(a.doc_index) == list(b.doc_index) and len(a) == 2 * 6
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-6)
    assert got["search"] == "faiss" and exact["search"] == "exact"
