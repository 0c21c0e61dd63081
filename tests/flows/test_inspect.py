"""`bergson inspect`: a healthy index reports complete; a missing manifest, a corrupted shard and an
orphan data file are each reported, with exit status 1."""

from __future__ import annotations

import json
import os

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build
from flows.cli import main


def test_inspect_reports_health(workspace, tmp_path, capsys):
    cfg = BuildConfig(index=str(tmp_path / "idx"), model=workspace["model"], dataset=workspace["corpus"],
                      shard_size=6, progress=False)
    plan = prepare_build(cfg)
    for shard in plan.shards:
        build_shard(cfg, *shard)
    assert main(["inspect", cfg.index, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] and report["shards_complete"] == 4 and report["documents_stored"] == 24
    assert report["bytes"] == sum(os.path.getsize(p) for p in (tmp_path / "idx" / "grads").glob("*.arrow"))

    grads = tmp_path / "idx" / "grads"
    os.remove(grads / "shard-00001.json")  # an interrupted shard: data without manifest
    with open(grads / "shard-00002.arrow", "r+b") as f:  # silent corruption
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert main(["inspect", cfg.index, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["shards_missing"] == [1] and report["shards_corrupt"] == [2]
    assert report["orphan_files"] == ["shard-00001.arrow"] and not report["healthy"]
    assert main(["inspect", cfg.index]) == 1  # the table view renders too
    assert "incomplete or corrupt" in capsys.readouterr().out
