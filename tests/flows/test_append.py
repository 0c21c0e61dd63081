"""`bergson build --append`: an index built on A and grown with B holds, shard for shard, the very
bytes of an index built on A+B with the same shard boundaries (B as a file of its own, or A's file
grown at its end); a rerun of the same append does nothing; a corpus whose indexed rows changed,
or options that differ, are refused; a fit after the append computes only the new shards' partial
statistics and equals a from-scratch fit in float64."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bergson_core import curvature as C
from bergson_core.config import BuildConfig
from bergson_core.config.curvature import FitConfig
from bergson_core.errors import ConfigError, StoreError
from bergson_core.index.append import nothing_new
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.store import Index

from .conftest import corpus_texts, write_jsonl
from .test_cli_errors import _assert_user_error

N_A = 10  # two shards of 5: the appended rows start a shard in both indexes


@pytest.fixture(scope="module")
def ws(tmp_path_factory, workspace):
    root = tmp_path_factory.mktemp("append")
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(corpus_texts(24))]
    return {"root": root, "rows": rows, "model": workspace["model"],
            "a": write_jsonl(root / "a.jsonl", rows[:N_A]), "b": write_jsonl(root / "b.jsonl", rows[N_A:]),
            "ab": write_jsonl(root / "ab.jsonl", rows)}


def _cfg(ws, index, dataset, **kw) -> BuildConfig:
    opts = {"index": str(index), "model": ws["model"], "dataset": dataset, "shard_size": 5, "projection_dim": 4,
            "grad_dtype": "float32", "batch_tokens": 256, "progress": False}
    return BuildConfig(**{**opts, **kw})


def _build(cfg: BuildConfig) -> list[int]:
    """The build flow's steps without Prefect: plan, then every missing shard; the shards computed."""
    plan = prepare_build(cfg)
    todo = plan.missing()
    for shard, start, stop in todo:
        build_shard(cfg, shard, start, stop)
    return [s[0] for s in todo]


def _files(index) -> dict[str, bytes]:
    grads = os.path.join(index, "grads")
    return {n: open(os.path.join(grads, n), "rb").read() for n in sorted(os.listdir(grads)) if n.endswith(".arrow")}


def _mtimes(index) -> dict[str, int]:
    return {n: os.stat(os.path.join(index, "grads", n)).st_mtime_ns for n in os.listdir(os.path.join(index, "grads"))}


@pytest.mark.parametrize("grown", [False, True], ids=["new-file", "grown-file"])
def test_append_equals_a_build_of_the_whole(ws, tmp_path, grown):
    whole = tmp_path / "whole"
    assert _build(_cfg(ws, whole, ws["ab"])) == [0, 1, 2, 3, 4]
    source = tmp_path / "corpus.jsonl"  # the grown-file case rewrites it in place
    write_jsonl(source, ws["rows"][:N_A])
    index = tmp_path / "grown"
    assert _build(_cfg(ws, index, str(source))) == [0, 1]
    before = _mtimes(index)
    if grown:
        write_jsonl(source, ws["rows"])
        new = _cfg(ws, index, str(source), append=True)
    else:
        new = _cfg(ws, index, ws["b"], append=True)
    assert _build(new) == [2, 3, 4]

    assert _files(index) == _files(whole)  # doc_index, doc_id (row numbers), num_tokens and gradients
    assert {k: v for k, v in _mtimes(index).items() if k in before} == before  # old shards never rewritten
    meta = Index(str(index)).meta()
    segs = meta["corpus"]
    assert [(s["uri"], s["source_start"], s["rows"], s["start"], s["first_shard"]) for s in segs] == [
        (str(source), 0, N_A, 0, 0), (new.dataset, N_A if grown else 0, 24 - N_A, N_A, 2)]
    assert meta["num_shards"] == 5 and meta["dataset"]["rows"] == 24
    # the grown file's fingerprint of all its rows is the one a build of the same rows records
    assert (segs[1]["prefix_sha256"] == Index(str(whole)).meta()["corpus"][0]["prefix_sha256"]) is grown

    # the same append again: nothing new, nothing computed, index.json untouched
    raw = (index / "index.json").read_bytes()
    assert nothing_new(new)["nothing_to_do"]
    assert _build(new) == [] and (index / "index.json").read_bytes() == raw


def test_changed_prefix_and_options_are_refused(ws, tmp_path):
    source = tmp_path / "corpus.jsonl"
    write_jsonl(source, ws["rows"][:N_A])
    index = tmp_path / "idx"
    _build(_cfg(ws, index, str(source)))
    raw = (index / "index.json").read_bytes()
    edited = [dict(r) for r in ws["rows"]]
    edited[3]["text"] = "an edited document"
    write_jsonl(source, edited)
    with pytest.raises(StoreError, match="first 10 rows of .* changed"):
        prepare_build(_cfg(ws, index, str(source), append=True))
    write_jsonl(source, ws["rows"][:4])
    with pytest.raises(StoreError, match="fewer than the 10 already indexed"):
        prepare_build(_cfg(ws, index, str(source), append=True))
    with pytest.raises(ConfigError, match="projection_dim"):
        prepare_build(_cfg(ws, index, ws["b"], append=True, projection_dim=2))
    assert (index / "index.json").read_bytes() == raw and sorted(_files(index)) == ["shard-00000.arrow",
                                                                                      "shard-00001.arrow"]


def test_cli_refuses_a_changed_prefix_in_one_line(ws, tmp_path, run_cli):
    source = tmp_path / "corpus.jsonl"
    write_jsonl(source, ws["rows"][:N_A])
    index = tmp_path / "idx"
    _build(_cfg(ws, index, str(source)))
    edited = [dict(r) for r in ws["rows"]]
    edited[0]["text"] = "changed"
    write_jsonl(source, edited)
    proc = run_cli("build", index, "--model", ws["model"], "--dataset", source, "--shard-size", "5",
                   "--projection-dim", "4", "--grad-dtype", "float32", "--append", "--no-progress")
    _assert_user_error(proc, "changed since they were indexed")


def test_fit_after_append_reuses_partials_and_equals_a_fit_from_scratch(ws, tmp_path, prefect_api):
    from flows.fit import fit

    whole, index = tmp_path / "whole", tmp_path / "grown"
    _build(_cfg(ws, whole, ws["ab"], dtype="float64"))
    _build(_cfg(ws, index, ws["a"], dtype="float64"))
    fit(FitConfig(index=str(index), strategy="ekfac", progress=False))
    stats = index / "stats"
    old = {os.path.join(d, n): os.stat(stats / d / n).st_mtime_ns for d in os.listdir(stats)
           for n in os.listdir(stats / d) if n.startswith("shard-")}
    _build(_cfg(ws, index, ws["b"], dtype="float64", append=True))
    grown = fit(FitConfig(index=str(index), strategy="ekfac", progress=False))
    # KFAC's statistics: the 3 new shards only; the eigenvalue pass runs in the new eigenbasis
    assert [(p["kind"], p["shards"], p["computed"]) for p in grown["passes"]] == [("kfac", 5, 3),
                                                                                 ("ekfac-lambda", 5, 5)]
    kfac_dir = grown["passes"][0]["dir"]
    assert {k: v for k, v in old.items() if k.startswith(kfac_dir)} == {
        k: os.stat(stats / k).st_mtime_ns for k in old if k.startswith(kfac_dir)}
    fresh = fit(FitConfig(index=str(whole), strategy="ekfac", progress=False))
    assert grown["documents"] == fresh["documents"] == 24
    a = C.load_preconditioner(str(index), "ekfac")
    b = C.load_preconditioner(str(whole), "ekfac")
    assert sorted(a.tensors) == sorted(b.tensors)
    for k in a.tensors:  # the same float64 sums in the same order: equal to the last bit
        assert a.tensors[k].dtype == torch.float64 and torch.equal(a.tensors[k], b.tensors[k]), k
    json.dumps(grown)  # the flow's result stays JSON-friendly
