"""Completion from one listing and the block summaries (issue 18 item 2): what a summary vouches for
is skipped without reading its manifest, anything that no longer matches it is read and judged."""

from __future__ import annotations

import json

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.store import MISSING, Index


def test_check_shards_from_listing_and_summaries(workspace, tmp_path, monkeypatch):
    cfg = BuildConfig(index=str(tmp_path / "idx"), model=workspace["model"], dataset=workspace["corpus"],
                      shard_size=4, projection_dim=4, grad_dtype="float32", progress=False)
    plan = prepare_build(cfg)
    manifests = [{k: v for k, v in build_shard(cfg, *s).items() if k not in ("skipped", "seconds")}
                 for s in plan.shards[:4]]
    index = Index(cfg.index)
    index.write_block_summary(manifests)
    every = [s[0] for s in plan.shards]
    assert len(every) > 4
    assert index.check_shards(every, checksum=False) == {i: MISSING for i in every[4:]}

    reads, read_many = [], Index._read_many
    monkeypatch.setattr(Index, "_read_many", lambda self, paths: reads.extend(p for p in paths if "/grads/" in p)
                        or read_many(self, paths))
    assert index.check_shards(range(4), checksum=False) == {}
    assert reads == []  # every shard vouched for by the summary: no manifest read at all
    monkeypatch.undo()

    grads = tmp_path / "idx" / "grads"
    (grads / "shard-00001.json").write_text("{not json")  # rewritten since the summary: read, and refused
    data = (grads / "shard-00002.arrow").read_bytes()
    (grads / "shard-00002.arrow").write_bytes(data[:-8])  # truncated data file
    (grads / "shard-00003.json").unlink()
    assert index.check_shards(range(4), checksum=False) == {
        1: "unreadable manifest", 2: f"size {len(data) - 8} != {len(data)} in its manifest", 3: MISSING}
    # the plan a rerun makes: the same answer, the broken shards to recompute
    assert {s[0] for s in prepare_build(cfg.model_copy(update={"verify": False})).missing()} == {1, 2, 3, *every[4:]}
    summary = json.loads(next((tmp_path / "idx" / "blocks").iterdir()).read_text())
    assert sorted(map(int, summary)) == [0, 1, 2, 3]
