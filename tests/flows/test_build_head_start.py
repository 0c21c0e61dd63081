"""`bergson build` with its own embedded Prefect API computes the first shards while the API starts:
the index is the one the flow alone writes, the summary counts that shard as computed, and a rerun
computes nothing."""

from __future__ import annotations

import os
import subprocess
import sys


def test_embedded_build_computes_the_first_shard_early_and_the_index_is_the_same(workspace, tmp_path):
    from bergson_core.config import BuildConfig
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.index.store import Index

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # no server: the CLI starts its own
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               OMP_NUM_THREADS="1", BERGSON_FIRST_BATCH_FILE=str(tmp_path / "first-batch"))
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    index = tmp_path / "cli"
    args = [exe, "build", str(index), "--model", workspace["model"], "--dataset", workspace["corpus"],
            "--id-column", "id", "--shard-size", "10"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "shards computed   │ 3" in first.stdout and "shards skipped    │ 0" in first.stdout, first.stdout
    assert os.path.exists(tmp_path / "first-batch")
    assert "while Prefect starts" in first.stderr  # computed before the flow, not by it
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout, again.stdout  # the no-op rerun: no model load, no flow
    assert "while Prefect starts" not in again.stderr
    # the same bytes as shards written by the library alone
    cfg = BuildConfig(index=str(tmp_path / "lib"), model=workspace["model"], dataset=workspace["corpus"],
                      id_column="id", shard_size=10, progress=False)
    for shard, start, stop in prepare_build(cfg).missing():
        build_shard(cfg, shard, start, stop)
    got = [m["sha256"] for m in Index(str(index)).manifests()]
    assert got == [m["sha256"] for m in Index(cfg.index).manifests()] and len(got) == 3
