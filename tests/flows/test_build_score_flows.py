"""The build and score flows through Prefect's API: outputs, reruns, artifacts."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.index.store import Index, grad_matrix
from flows.build import build_index
from flows.score import score


def _files(folder) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def _cfg(ws, index, **kw) -> BuildConfig:
    return BuildConfig(index=str(index), model=ws["model"], dataset=ws["corpus"], id_column="id", shard_size=5,
                       grad_dtype="float32", progress=False, **kw)


def test_build_then_rerun_skips_everything(prefect_api, workspace, tmp_path):
    cfg = _cfg(workspace, tmp_path / "idx")
    first = build_index(cfg)
    assert first["shards"] == 5 and first["shards_computed"] == 5 and first["documents"] == 24
    before = _files(tmp_path / "idx")
    again = build_index(cfg)
    assert again["shards_computed"] == 0 and again["shards_skipped"] == 5
    assert _files(tmp_path / "idx") == before


def test_deleted_shard_is_recomputed_identically(prefect_api, workspace, tmp_path):
    cfg = _cfg(workspace, tmp_path / "idx")
    build_index(cfg)
    before = _files(tmp_path / "idx")
    os.remove(tmp_path / "idx" / "grads" / "shard-00002.json")  # the shard no longer exists
    result = build_index(cfg)
    assert result["shards_computed"] == 1
    assert _files(tmp_path / "idx") == before


def test_score_flow_writes_topk_matching_brute_force(prefect_api, workspace, tmp_path):
    cfg = _cfg(workspace, tmp_path / "idx")
    build_index(cfg)
    out = tmp_path / "scores"
    result = score(ScoreConfig(index=cfg.index, queries=workspace["queries"], top_k=4, output=str(out),
                               metric="inner"))
    table = pq.read_table(out / "topk.parquet").to_pandas()
    assert list(table.columns) == ["query_index", "rank", "doc_index", "score", "doc_id", "text"]
    assert len(table) == 2 * 4 and result["queries"] == 2
    # independent check: brute-force inner products of the stored query and corpus matrices
    index = Index(cfg.index)
    corpus = np.concatenate([grad_matrix(t) for _, t in index.iter_shards()]).astype(np.float64)
    from bergson_core.index.store import read_grads

    q = grad_matrix(read_grads(str(out / "query_grads.arrow"))).astype(np.float64)
    full = q @ corpus.T
    for qi in range(2):
        expect = np.argsort(-full[qi], kind="stable")[:4]
        got = table[table.query_index == qi].sort_values("rank")
        assert list(got.doc_index) == list(expect)
        np.testing.assert_allclose(got.score, full[qi, expect], rtol=1e-4)
        assert list(got.doc_id) == [f"doc-{i}" for i in expect]
    # query 0 is corpus document 3 itself: it must be its own best match under cosine
    cos = score(ScoreConfig(index=cfg.index, queries=workspace["queries"], top_k=1, output=str(tmp_path / "c")))
    assert cos["rows"][0]["doc_index"] == 3 and abs(cos["rows"][0]["score"] - 1) < 1e-4


def test_flows_leave_artifacts(prefect_api, workspace, tmp_path):
    """Artifacts read back by the flow runs of this test only, so no other test's build or score
    (which share artifact keys when their spec is the same) can satisfy the assertions."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    cfg = _cfg(workspace, tmp_path / "idx")
    built = build_index(cfg, return_state=True)
    scored = score(ScoreConfig(index=cfg.index, queries=workspace["queries"], top_k=2, output=str(tmp_path / "s")),
                   return_state=True)
    assert built.is_completed() and scored.is_completed()

    async def of_run(state):
        async with get_client() as client:
            run_id = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=run_id))

    arts, score_arts = asyncio.run(of_run(built)), asyncio.run(of_run(scored))
    assert {"progress", "markdown"} <= {a.type for a in arts}
    assert all(cfg.spec_hash() in a.key for a in arts if a.key)
    link = [a for a in arts if a.key and a.key.endswith("-index")]  # Prefect stores links as markdown
    assert len(link) == 1 and str(tmp_path / "idx") in link[0].data
    tables = [a for a in score_arts if a.type == "table"]
    assert tables and "doc_index" in tables[0].data
