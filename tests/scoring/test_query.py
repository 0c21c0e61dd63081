"""`bergson query` (exact): the same answers as `bergson score` on the same prompts, bottom-k the
last rows of a full ranking, and standard input answered line by line with one model load."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.config.query import QueryConfig
from bergson_core.errors import ConfigError
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.model import loading
from bergson_core.model.tiny import save_tiny
from bergson_core.scoring.query import QUERY_FILE, QueryEngine, answer_lines
from bergson_core.scoring.run import ensure_query_gradients, run_topk

from ..flows.conftest import WORDS, corpus_texts, write_jsonl

PROMPTS = ["the violin and the candle", "a river near the stone garden"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    texts = [f"{t} {WORDS[i // 16]}" for i, t in enumerate(corpus_texts(30))]  # no two alike: no tied scores
    corpus = write_jsonl(root / "corpus.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    queries = write_jsonl(root / "queries.jsonl", [{"text": t} for t in PROMPTS])
    model = save_tiny(str(root / "model"), "gpt2", texts + PROMPTS, hidden=16, layers=2)
    cfg = BuildConfig(index=str(root / "idx"), model=model, dataset=corpus, id_column="id", shard_size=7,
                      grad_dtype="float32", dtype="float64", device="cpu", progress=False)
    for shard, start, stop in prepare_build(cfg).missing():
        build_shard(cfg, shard, start, stop)
    return {"root": root, "index": cfg.index, "queries": queries, "docs": len(texts)}


def _score(job, tmp, **kw) -> dict:
    cfg = ScoreConfig(index=job["index"], queries=job["queries"], output=str(tmp), progress=False, **kw)
    ensure_query_gradients(cfg)
    return run_topk(cfg)


def _query(job, tmp, texts=PROMPTS, **kw) -> tuple[dict, object]:
    cfg = QueryConfig(index=job["index"], output=str(tmp), progress=False, **kw)
    result = QueryEngine(cfg).ask(texts)
    return result, pq.read_table(result["output"]).to_pandas()


@pytest.mark.parametrize("metric", ["inner", "cosine"])
def test_query_equals_score_on_the_same_prompts(job, tmp_path, metric):
    ref = pq.read_table(_score(job, tmp_path / "s", metric=metric, top_k=5)["output"]).to_pandas()
    _, got = _query(job, tmp_path / "q", metric=metric, top_k=5)
    top = got[got.side == "top"]
    assert len(top) == len(ref) == 10
    assert list(top.doc_index) == list(ref.doc_index) and list(top.doc_id) == list(ref.doc_id)
    np.testing.assert_allclose(top.score, ref.score, rtol=1e-9, atol=1e-12)
    assert list(top.prompt) == [PROMPTS[i] for i in top.query_index]


def test_bottom_k_is_the_end_of_the_full_ranking(job, tmp_path):
    n = job["docs"]
    full = pq.read_table(_score(job, tmp_path / "s", metric="inner", top_k=n)["output"]).to_pandas()
    _, got = _query(job, tmp_path / "q", metric="inner", top_k=2, bottom_k=4)
    for qi in range(2):
        ranking = full[full.query_index == qi].sort_values("rank")
        bottom = got[(got.side == "bottom") & (got.query_index == qi)].sort_values("rank")
        assert list(bottom.doc_index) == list(ranking.doc_index[::-1][:4])  # rank 0 = the lowest score
        np.testing.assert_allclose(bottom.score, ranking.score[::-1][:4], rtol=1e-9, atol=1e-12)
        assert (np.diff(bottom.score) >= 0).all()
        assert len(got[(got.side == "top") & (got.query_index == qi)]) == 2


def test_stdin_answers_each_line_with_one_model_load(job, tmp_path, monkeypatch):
    loading.clear_cache()
    loads = []
    real = loading._load
    monkeypatch.setattr(loading, "_load", lambda *a: loads.append(1) or real(*a))  # counts real loads
    cfg = QueryConfig(index=job["index"], output=str(tmp_path), top_k=3, metric="inner", progress=False)
    answers = []
    n = answer_lines(QueryEngine(cfg), io.StringIO(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n"), answers.append)
    assert n == 2 and len(loads) == 1
    assert [a["query_texts"] for a in answers] == [[PROMPTS[0]], [PROMPTS[1]]]
    _, both = _query(job, tmp_path / "both", top_k=3, metric="inner")  # the same prompts asked together
    for i, a in enumerate(answers):
        one = pq.read_table(a["output"]).to_pandas()
        assert list(one.doc_index) == list(both[both.query_index == i].doc_index)


def test_options_that_cannot_work_are_refused(job):
    with pytest.raises(ConfigError, match="both 0"):
        QueryConfig(index=job["index"], top_k=0).check()
    with pytest.raises(ConfigError, match="not both"):
        QueryConfig(index=job["index"], text=["a"], queries=job["queries"]).check()


def test_output_names_the_file(job, tmp_path):
    result, table = _query(job, tmp_path, texts=[PROMPTS[0]], top_k=2, bottom_k=1)
    assert result["output"].endswith(QUERY_FILE)
    assert list(table.columns) == ["query_index", "side", "rank", "doc_index", "score", "doc_id", "text", "prompt"]
    assert list(table.side) == ["top", "top", "bottom"]


@pytest.mark.parametrize("metric", ["inner", "cosine"])
def test_per_token_scores_sum_to_the_document_score(job, tmp_path, metric):
    from bergson_core.scoring.per_token import PER_TOKEN_FILE

    result, table = _query(job, tmp_path, texts=[PROMPTS[0]], top_k=2, bottom_k=1, metric=metric, per_token=True)
    tokens = pq.read_table(tmp_path / result["output_folder"].rsplit("/", 1)[1] / PER_TOKEN_FILE).to_pandas()
    assert list(tokens.columns) == ["query_index", "doc_index", "position", "token", "score"]
    for _, row in table.iterrows():
        mine = tokens[(tokens.query_index == row.query_index) & (tokens.doc_index == row.doc_index)]
        assert list(mine.position) == list(range(len(mine))) and mine.score.iloc[0] == 0  # nothing predicts token 0
        # float64 model: the split is exact up to float64 rounding; the stored row is float32
        np.testing.assert_allclose(mine.score.sum(), row.score, rtol=1e-6)
    assert set(result["per_token"]["strongest"]) == {f"0:{d}" for d in table.doc_index}


def test_per_token_rows_split_the_gradient_and_masked_tokens_give_zero(job):
    from bergson_core.data.corpus import Doc
    from bergson_core.gradients.extract import compute_gradients, tracked_modules
    from bergson_core.scoring.per_token import token_rows
    from bergson_core.scoring.score import index_build_config

    engine = QueryEngine(QueryConfig(index=job["index"], progress=False))
    bcfg = index_build_config(engine.meta, engine.scfg)
    loaded = loading.load_model(bcfg)
    ids = loaded.tokenizer("the violin and the candle near a river")["input_ids"]
    labels = [-100] * 4 + ids[4:]  # a prompt of 4 tokens: no loss there
    doc = Doc(0, "d", ids, labels)
    rows = token_rows(engine, doc)
    assert rows.dtype == np.float64 and (rows[:4] == 0).all() and (np.abs(rows[4:]).sum(axis=1) > 0).all()
    whole, _ = compute_gradients(loaded, tracked_modules(loaded, bcfg), [doc], bcfg, None)
    np.testing.assert_allclose(rows.sum(axis=0), whole[0], rtol=1e-10, atol=1e-12 * np.abs(whole).max())
