"""`bergson status INDEX`: complete, missing and corrupt shards, outputs, --repair, exit codes."""

from __future__ import annotations

import json

import pytest

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.model.tiny import save_tiny
from flows.cli import main
from flows.commands.status import ranges

from .conftest import texts


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    docs = texts(30)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    model = save_tiny(str(root / "model"), "gpt2", docs, hidden=16, layers=1)
    return {"root": root, "corpus": str(corpus), "model": model}


def _build(small_index, index, shards=None) -> BuildConfig:
    cfg = BuildConfig(index=str(index), model=small_index["model"], dataset=small_index["corpus"], shard_size=5,
                      max_length=32, progress=False)
    plan = prepare_build(cfg)
    for shard, start, stop in plan.shards:
        if shards is None or shard in shards:
            build_shard(cfg, shard, start, stop)
    return cfg


def _status(capsys, *args) -> tuple[int, dict]:
    code = main(["status", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_ranges():
    assert ranges([]) == "" and ranges([3]) == "3"
    assert ranges([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8"


def test_complete_index(small_index, tmp_path, capsys):
    _build(small_index, tmp_path / "idx")
    code, s = _status(capsys, tmp_path / "idx")
    assert code == 0 and s["complete"] and s["shards_complete"] == s["shards_expected"] == 6
    assert s["shards_missing"] == [] and s["shards_corrupt"] == [] and s["scores"] == []


def test_missing_corrupt_and_repair(small_index, tmp_path, capsys):
    idx = tmp_path / "idx"
    cfg = _build(small_index, idx, shards={0, 1, 2, 4})  # 3 and 5 never built
    data = idx / "grads" / "shard-00002.arrow"
    data.write_bytes(data.read_bytes()[:-8] + b"\x00" * 8)  # bit rot
    (idx / "grads" / "shard-00003.arrow").write_bytes(b"half a write")  # data without manifest
    code, s = _status(capsys, idx)
    assert code == 1 and not s["complete"]
    assert s["shards_missing"] == [3, 5] and s["shards_corrupt"] == [2] and s["shards_complete"] == 3
    assert s["orphan_files"] == ["shard-00003.arrow"]

    code, s = _status(capsys, idx, "--repair")
    assert code == 1 and sorted(s["repaired"]) == ["shard-00002.arrow", "shard-00002.json", "shard-00003.arrow"]
    code, s = _status(capsys, idx)
    assert s["shards_missing"] == [2, 3, 5] and s["shards_corrupt"] == [] and s["orphan_files"] == []

    _build(small_index, idx)  # a rerun computes exactly what status said was missing
    code, s = _status(capsys, idx)
    assert code == 0 and s["complete"]
    assert cfg.index == s["index"]


def test_human_output_and_no_index(small_index, tmp_path, capsys):
    idx = tmp_path / "idx"
    _build(small_index, idx, shards={0})
    assert main(["status", str(idx)]) == 1
    out = capsys.readouterr().out
    assert "1/6 complete" in out and "1-5" in out and "rerun the same `bergson build`" in out
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "no index at" in capsys.readouterr().err
