"""End to end in bergson_core (no Prefect): build an index from a JSONL corpus and a saved tiny
model, compute query gradients, score, and check everything against brute force on the stored
matrices. Scores must not depend on how the work was cut up (batches, shards, blocks)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.data.corpus import load_corpus
from bergson_core.errors import StoreError
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.store import Index, grad_matrix
from bergson_core.model.tiny import save_tiny
from bergson_core.scoring.results import topk_table
from bergson_core.scoring.score import query_gradients, score_index

from .helpers import QUERIES, TEXTS, write_jsonl

CORPUS = TEXTS + [""]  # the last document has no loss tokens: a zero row
N = len(CORPUS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    write_jsonl(root / "corpus.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(CORPUS)])
    # the first query is word for word the first corpus document
    write_jsonl(root / "queries.jsonl", [{"text": q} for q in QUERIES])
    save_tiny(str(root / "model"), "gpt2", TEXTS + QUERIES, seed=1, hidden=16, layers=2)
    return root


def build(workdir, name: str, **kw) -> tuple[Index, dict]:
    opts = dict(
        model=str(workdir / "model"), dataset=str(workdir / "corpus.jsonl"), index=str(workdir / name),
        id_column="id", projection_dim=6, include_bias=True, grad_dtype="float32", dtype="float32",
        device="cpu", shard_size=N, batch_tokens=64, progress=False,
    )
    opts.update(kw)
    cfg = BuildConfig(**opts)
    plan = prepare_build(cfg)
    for shard, start, stop in plan.shards:
        out = build_shard(cfg, shard, start, stop)
        assert out["skipped"] is False and out["rows"] == stop - start
    assert plan.missing() == []
    return plan.index, plan.index.meta()


def score_cfg(workdir, index: Index, **kw) -> ScoreConfig:
    return ScoreConfig(index=index.url, queries=str(workdir / "queries.jsonl"), device="cpu",
                       progress=False, **kw)


def stored_matrix(index: Index) -> np.ndarray:
    parts, first = [], 0
    for m, table in index.iter_shards():
        assert table.column("doc_index").to_pylist() == list(range(first, first + m["rows"]))
        parts.append(grad_matrix(table))
        first += m["rows"]
    assert first == N
    return np.concatenate(parts).astype(np.float64)


def brute_scores(q: np.ndarray, d: np.ndarray, metric: str) -> np.ndarray:
    q, d = q.astype(np.float64), d.astype(np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
    return q @ d.T  # [Q, N]


def full_scores(index: Index, q: np.ndarray, metric: str, aggregate: str = "individual", block_rows: int = 4096):
    """All N scores per query row, reordered by document index (top_k = N)."""
    scores, docs = score_index(index, q, metric, aggregate, top_k=N + 5, block_rows=block_rows)
    assert scores.shape[1] == N and all(sorted(row) == list(range(N)) for row in docs.tolist())
    out = np.empty_like(scores)
    np.put_along_axis(out, docs, scores, axis=1)
    return out


@pytest.fixture(scope="module")
def base(workdir):
    index, meta = build(workdir, "base")
    q = query_gradients(meta, score_cfg(workdir, index)).grads
    return index, meta, q


def assert_scores_close(got, want):
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_build_writes_every_document(base):
    index, meta, q = base
    d = stored_matrix(index)
    assert d.shape == (N, meta["row_width"]) and q.shape == (len(QUERIES), meta["row_width"])
    assert meta["row_width"] == 36 * len(meta["modules"])
    assert not d[-1].any() and (np.abs(d[:-1]).sum(axis=1) > 0).all()  # the empty document
    (manifest,) = index.manifests()
    assert manifest["empty_documents"] == 1


def test_identical_query_and_document_have_identical_gradients(base):
    index, meta, q = base
    d = stored_matrix(index)
    np.testing.assert_allclose(q[0], d[0], rtol=1e-4, atol=1e-5 * np.abs(d[0]).max())
    scores, docs = score_index(index, q, "cosine", "individual", top_k=1, block_rows=7)
    assert docs[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("metric", ["inner", "cosine"])
@pytest.mark.parametrize("k", [1, 5])
def test_topk_equals_brute_force(base, metric, k):
    index, meta, q = base
    want = brute_scores(q, stored_matrix(index), metric)
    scores, docs = score_index(index, q, metric, "individual", top_k=k, block_rows=4)
    assert scores.shape == docs.shape == (len(QUERIES), k)
    for qi in range(len(QUERIES)):
        order = np.argsort(-want[qi], kind="stable")[:k]
        gap = np.diff(np.sort(want[qi])[::-1][: k + 1])
        assert (np.abs(gap) > 1e-4 * np.abs(want[qi]).max()).all()  # no near-ties to blur the order
        assert docs[qi].tolist() == order.tolist()
        np.testing.assert_allclose(scores[qi], want[qi, order], rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


@pytest.mark.parametrize("metric", ["inner", "cosine"])
@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_aggregates_equal_brute_force(base, metric, aggregate):
    index, meta, q = base
    per_query = brute_scores(q, stored_matrix(index), metric)
    want = per_query.mean(axis=0) if aggregate == "mean" else per_query.max(axis=0)
    got = full_scores(index, q, metric, aggregate, block_rows=3)
    assert got.shape == (1, N)
    assert_scores_close(got[0], want)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("one-doc-batches-3-shards", dict(batch_tokens=1, shard_size=7)),
        ("big-batches-7-shards", dict(batch_tokens=10_000, shard_size=3)),
    ],
)
def test_scores_do_not_depend_on_batches_or_shards(workdir, base, name, kw):
    index, meta, q = base
    other, other_meta = build(workdir, name, **kw)
    assert other_meta["num_shards"] == -(-N // kw["shard_size"]) and len(other.manifests()) > 1
    assert other_meta["modules"] == meta["modules"]
    np.testing.assert_allclose(stored_matrix(other), stored_matrix(index), rtol=1e-5,
                               atol=1e-6 * np.abs(stored_matrix(index)).max())
    for metric in ["inner", "cosine"]:
        want = full_scores(index, q, metric)
        for block_rows in [1, 4, 4096]:
            assert_scores_close(full_scores(other, q, metric, block_rows=block_rows), want)


def test_block_rows_do_not_change_topk(base):
    index, meta, q = base
    results = [score_index(index, q, "cosine", "individual", top_k=4, block_rows=b) for b in (1, 2, 5, 4096)]
    for scores, docs in results[1:]:
        np.testing.assert_array_equal(docs, results[0][1])
        np.testing.assert_allclose(scores, results[0][0], rtol=1e-6, atol=1e-7)


def test_float16_index_scores_close_to_float32(workdir, base):
    index, meta, q = base
    half, _ = build(workdir, "half", grad_dtype="float16")
    assert grad_matrix(half.open_shard(0)).dtype == np.float16
    want = full_scores(index, q, "cosine")
    np.testing.assert_allclose(full_scores(half, q, "cosine"), want, atol=2e-3)


def test_rebuilt_shard_is_byte_identical_and_complete_shards_are_skipped(workdir):
    index, meta = build(workdir, "resume", shard_size=7)
    first = index.manifest(1)
    os.remove(index.manifest_path(1))  # as if the worker died before writing the manifest
    cfg = BuildConfig(model=str(workdir / "model"), dataset=str(workdir / "corpus.jsonl"), index=index.url,
                      id_column="id", projection_dim=6, include_bias=True, grad_dtype="float32",
                      dtype="float32", device="cpu", shard_size=7, batch_tokens=64, progress=False)
    plan = prepare_build(cfg)  # same spec: accepted
    assert [s[0] for s in plan.missing()] == [1]
    assert build_shard(cfg, 0, 0, 7)["skipped"] is True
    again = build_shard(cfg, 1, 7, 14)
    assert again["skipped"] is False and again["sha256"] == first["sha256"]


def test_index_refuses_another_projection_seed(workdir, base):
    index, meta, q = base
    spec = {k: v for k, v in meta["spec"].items() if k in BuildConfig.model_fields}  # not code_version
    cfg = BuildConfig(**spec, index=index.url, device="cpu", progress=False)
    prepare_build(cfg)  # the very same spec is accepted
    cfg.projection_seed = 1
    with pytest.raises(StoreError, match="projection_seed"):
        prepare_build(cfg)
    assert Index(index.url).meta()["spec_hash"] == meta["spec_hash"]  # left alone


def test_incomplete_or_mismatched_index_is_refused(workdir, base):
    index, meta, q = base
    copy = workdir / "three-shards-copy"
    three, _ = build(workdir, "three-shards", shard_size=7)
    shutil.copytree(three.path, copy)
    broken = Index(str(copy))
    os.remove(broken.manifest_path(1))
    with pytest.raises(StoreError, match="incomplete"):
        score_index(broken, q, "cosine", "individual", top_k=3, block_rows=8)
    with pytest.raises(StoreError, match="columns"):
        score_index(index, q[:, :-1], "cosine", "individual", top_k=3, block_rows=8)


def test_topk_table_layout(workdir, base):
    index, meta, q = base
    k = 3
    scores, docs = score_index(index, q, "inner", "individual", top_k=k, block_rows=8)
    corpus = load_corpus(str(workdir / "corpus.jsonl"))
    table = topk_table(scores, docs, corpus, meta["spec"], aggregated=False)
    assert table.column_names == ["query_index", "rank", "doc_index", "score", "doc_id", "text"]
    assert table.num_rows == len(QUERIES) * k
    rows = table.to_pylist()
    for r in rows:
        qi, rank, d = r["query_index"], r["rank"], r["doc_index"]
        assert 0 <= qi < len(QUERIES) and 0 <= rank < k and 0 <= d < N
        assert d == docs[qi, rank] and r["score"] == pytest.approx(float(scores[qi, rank]))
        assert r["doc_id"] == f"doc-{d}" and r["text"] == CORPUS[d]
    assert sorted({r["query_index"] for r in rows}) == list(range(len(QUERIES)))
    assert [r["rank"] for r in rows[:k]] == list(range(k))
    # without an id column the id is the 0-based row number
    no_ids = topk_table(scores, docs, corpus, {**meta["spec"], "id_column": None}, aggregated=False)
    assert no_ids.column("doc_id").to_pylist() == [str(d) for d in no_ids.column("doc_index").to_pylist()]
    # an aggregate is one pseudo-query with index -1; k larger than the corpus keeps N rows
    agg_scores, agg_docs = score_index(index, q, "cosine", "mean", top_k=N + 3, block_rows=8)
    agg = topk_table(agg_scores, agg_docs, corpus, meta["spec"], aggregated=True)
    assert set(agg.column("query_index").to_pylist()) == {-1}
    assert agg.column("rank").to_pylist() == list(range(N))
    assert sorted(agg.column("doc_index").to_pylist()) == list(range(N))
