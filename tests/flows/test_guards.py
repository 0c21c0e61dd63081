"""Issue 12: never a wrong answer with exit 0. Mismatched models and corpora, null and empty texts,
corrupt shards and concurrent builds are refused or repaired, and say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.data.corpus import tokenize_rows
from bergson_core.errors import InputError, StoreError
from bergson_core.index.build import build_shard, open_corpus, prepare_build
from bergson_core.index.store import Index
from bergson_core.model import loading as models
from bergson_core.scoring.run import ensure_query_gradients, run_topk

from .conftest import corpus_texts, write_jsonl


def _cfg(ws, index, **kw) -> BuildConfig:
    return BuildConfig(index=str(index), model=ws["model"], dataset=ws["corpus"], id_column="id",
                       shard_size=8, projection_dim=4, grad_dtype="float32", progress=False, **kw)


def _build(cfg: BuildConfig) -> None:
    """The build without Prefect: the same core calls the flow's tasks make."""
    for s in prepare_build(cfg).missing():
        build_shard(cfg, *s)


def _score(index, queries, **kw) -> dict:
    cfg = ScoreConfig(index=str(index), queries=queries, top_k=3, progress=False, **kw)
    ensure_query_gradients(cfg)
    return run_topk(cfg)


@pytest.fixture
def built(workspace, tmp_path):
    cfg = _cfg(workspace, tmp_path / "idx")
    _build(cfg)
    return cfg


def test_score_refuses_a_changed_model_unless_allowed(workspace, built, tmp_path):
    from transformers import AutoModelForCausalLM

    other = tmp_path / "model"
    shutil.copytree(workspace["model"], other)
    m = AutoModelForCausalLM.from_pretrained(other)
    m.transformer.h[0].mlp.c_fc.weight.data.mul_(1.5)  # same shapes, other weights
    m.save_pretrained(other)
    with pytest.raises(StoreError, match="fingerprint .* differs .*--allow-model-mismatch"):
        _score(built.index, workspace["queries"], model=str(other), output=str(tmp_path / "s1"))
    assert not os.path.exists(tmp_path / "s1" / "query_grads.arrow")  # refused before any query gradient
    result = _score(built.index, workspace["queries"], model=str(other), output=str(tmp_path / "s2"),
                    allow_model_mismatch=True)
    assert any("--allow-model-mismatch" in w for w in result["warnings"])
    meta = pq.read_schema(tmp_path / "s2" / "topk.parquet").metadata
    assert b"allow-model-mismatch" in meta[b"bergson.warnings"]
    # the index's own model, unchanged: no warning
    assert _score(built.index, workspace["queries"], output=str(tmp_path / "s3"))["warnings"] == []


def test_weights_changed_in_place_are_refused_even_with_reusable_query_gradients(workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tmp_path / "model"
    shutil.copytree(workspace["model"], model)
    cfg = BuildConfig(**{**_cfg(workspace, tmp_path / "idx").model_dump(), "model": str(model)})
    _build(cfg)
    _score(cfg.index, workspace["queries"])  # writes query gradients that a rerun would reuse
    m = AutoModelForCausalLM.from_pretrained(model)
    m.transformer.h[1].attn.c_attn.weight.data.add_(0.01)
    m.save_pretrained(model)
    models.clear_cache()  # a new process would load the changed weights
    with pytest.raises(StoreError, match="differs"):
        _score(cfg.index, workspace["queries"])
    models.clear_cache()


def test_reordered_corpus_gives_no_wrong_texts(workspace, tmp_path):
    texts = corpus_texts()
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    cfg = BuildConfig(**{**_cfg(workspace, tmp_path / "idx").model_dump(), "dataset": corpus})
    _build(cfg)
    before = _score(cfg.index, workspace["queries"], output=str(tmp_path / "a"))
    assert before["warnings"] == [] and all(r["text"] == texts[r["doc_index"]][:160] for r in before["rows"])
    time.sleep(0.01)
    write_jsonl(corpus, [{"id": f"doc-{i}", "text": t} for i, t in reversed(list(enumerate(texts)))])
    after = _score(cfg.index, workspace["queries"], output=str(tmp_path / "b"))
    assert any("changed since the index was built" in w for w in after["warnings"])
    assert all(r["text"] is None for r in after["rows"])  # no text of another document
    assert [r["doc_id"] for r in after["rows"]] == [r["doc_id"] for r in before["rows"]]  # ids from the index
    assert all(r["doc_id"] == f"doc-{r['doc_index']}" for r in after["rows"])


def test_null_text_is_empty_never_the_word_none(workspace, tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": None}, {"text": "the apple and the river"}, {"text": "None"}])
    tok = models.load_model(_cfg(workspace, tmp_path / "i")).tokenizer
    docs = tokenize_rows(open_corpus(path, "train", {}), 0, 3, tok, 64)
    assert docs[0].num_loss_tokens == 0 and docs[0].input_ids == tok("")["input_ids"]
    assert docs[2].input_ids != docs[0].input_ids  # the literal word is text; a null is not


def test_queries_without_loss_tokens_are_refused_by_row(workspace, built, tmp_path):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": ""}, {"text": None}, {"text": "  "}])
    with pytest.raises(InputError, match=r"3 of 3 queries .* rows 0, 1, 2"):
        _score(built.index, queries, output=str(tmp_path / "s"))
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"text": "the apple and the river"}, {"text": ""}])
    with pytest.raises(InputError, match=r"1 of 2 queries .* rows 1 "):
        _score(built.index, mixed, output=str(tmp_path / "s"))


def test_score_refuses_incomplete_or_corrupt_index_before_query_gradients(workspace, built, tmp_path):
    ix = Index(built.index)
    data = bytearray(open(ix.shard_path(1), "rb").read())
    data[-40] ^= 0xFF
    open(ix.shard_path(1), "wb").write(bytes(data))
    with pytest.raises(StoreError, match="shard 1 .* corrupt .checksum mismatch"):
        ensure_query_gradients(ScoreConfig(index=built.index, queries=workspace["queries"], output=str(tmp_path / "s")))
    os.remove(ix.manifest_path(2))
    with pytest.raises(StoreError, match="incomplete .2/3 shards, missing 2"):
        ensure_query_gradients(ScoreConfig(index=built.index, queries=workspace["queries"], output=str(tmp_path / "s")))
    assert not os.path.exists(tmp_path / "s")
    (tmp_path / "file").write_text("x")
    _build(built)  # repaired: the corrupt shard recomputed, the missing one computed
    with pytest.raises(StoreError, match="--output .* existing file"):
        ensure_query_gradients(ScoreConfig(index=built.index, queries=workspace["queries"], output=str(tmp_path / "file")))


def test_rebuild_recomputes_corrupt_shards_and_says_so(prefect_api, workspace, tmp_path):
    from flows.build import build_index

    cfg = _cfg(workspace, tmp_path / "idx")
    build_index(cfg)
    ix = Index(cfg.index)
    good = {i: open(ix.shard_path(i), "rb").read() for i in range(3)}
    data = bytearray(good[0])
    data[-40] ^= 0xFF  # bit rot: same size
    open(ix.shard_path(0), "wb").write(bytes(data))
    open(ix.shard_path(2), "wb").write(good[2][:-8])  # truncated
    out = build_index(cfg)  # Prefect's task cache would call these shards done
    assert out["shards_recomputed"] == {0: "checksum mismatch", 2: f"size {len(good[2]) - 8} != {len(good[2])} "
                                        "in its manifest"}
    assert out["shards_computed"] == 2 and out["shards_skipped"] == 1
    assert {i: open(ix.shard_path(i), "rb").read() for i in range(3)} == good
    assert all(m["spec_hash"] == cfg.spec_hash() for m in ix.manifests())


def test_second_build_into_a_busy_index_is_refused(run_cli, prefect_api, workspace, tmp_path):
    index = tmp_path / "idx"
    common = ["--model", workspace["model"], "--dataset", workspace["corpus"], "--shard-size", "1",
              "--projection-dim", "0", "--grad-dtype", "float32", "--no-progress"]
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    first = subprocess.Popen([exe, "build", str(index), *common], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (index / "lease.json").exists():
        time.sleep(0.05)
    second = run_cli("build", index, *common, "--projection-seed", "1", "--overwrite")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is being built by another run" in lines[0], second.stderr
    meta = json.loads((index / "index.json").read_text())
    assert meta["spec"]["projection_seed"] == 0
    manifests = [json.loads((index / "grads" / f).read_text()) for f in os.listdir(index / "grads")
                 if f.endswith(".json")]
    assert len(manifests) == 24 and {m["spec_hash"] for m in manifests} == {meta["spec_hash"]}
    assert not (index / "lease.json").exists()  # given back at the end


def _one_line(proc, *needles) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "blob.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "a-file").write_text("not a folder")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "index.json").write_text("{\x00 not json")
    return tmp_path


@pytest.mark.parametrize("case, args, needles", [
    ("binary dataset", ["--dataset", "{d}/blob.jsonl"], ["not UTF-8 text"]),
    (".bin dataset", ["--dataset", "{d}/data.bin"], ["unknown format"]),
    ("index is a file", ["{d}/a-file"], ["is an existing file"]),
    ("garbage index.json", ["{d}/garbage"], ["unreadable", "--overwrite"]),
    ("huge projection", ["--projection-dim", "200000"], ["--projection-dim 200000", "lower --projection-dim"]),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, workspace, bad_files, case, args, needles):
    args = [a.format(d=bad_files) for a in args]
    index = args.pop(0) if not args[0].startswith("--") else str(bad_files / "idx")
    proc = run_cli("build", index, "--model", workspace["model"], "--dataset", workspace["corpus"], *args)
    _one_line(proc, *needles)
    assert not os.path.exists(bad_files / "idx" / "index.json")
    if case == "garbage index.json":  # and --overwrite replaces it
        ok = run_cli("build", index, "--model", workspace["model"], "--dataset", workspace["corpus"],
                     "--projection-dim", "2", "--overwrite", "--no-progress")
        assert ok.returncode == 0, ok.stderr
        assert json.loads((bad_files / "garbage" / "index.json").read_text())["num_shards"] == 1


def test_score_against_a_corrupt_index_is_one_line(run_cli, workspace, built, tmp_path):
    os.remove(Index(built.index).manifest_path(1))
    proc = run_cli("score", built.index, "--queries", workspace["queries"], "--output", tmp_path / "s")
    _one_line(proc, "incomplete", "missing 1")
    assert not os.path.exists(tmp_path / "s")
