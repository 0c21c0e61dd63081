"""`bergson build --fan-out workers`: one build spread over the pool's workers as child runs of the
build-shards deployment, against a real `prefect server`, the moto S3 server and three process workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from .conftest import BIN, BUCKET, POOL, REPO, run_cli, wait_until

SHARD_SIZE = 11  # 132 documents -> 12 shards, 6 blocks of 2


def _grads(s3, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/grads/"):
        for o in page.get("Contents", []):
            out[o["Key"].rsplit("/", 1)[1]] = s3["client"].get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def _reference(assets, tmp_path) -> dict[str, bytes]:
    """The same index built in this process, shard after shard, without Prefect."""
    from bergson_core.config import BuildConfig
    from bergson_core.index.build import build_shard, prepare_build

    cfg = BuildConfig(index=str(tmp_path / "ref"), model=assets["model"], dataset=assets["corpus"], id_column="id",
                      shard_size=SHARD_SIZE, max_length=64, grad_dtype="float32", progress=False)
    for shard in prepare_build(cfg).missing():
        build_shard(cfg, *shard)
    grads = tmp_path / "ref" / "grads"
    return {p.name: p.read_bytes() for p in sorted(grads.iterdir())}


def _children(prefect_client, cfg) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.fanout import build_tag

    return prefect_client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[build_tag(cfg)])))


def test_fan_out_spreads_blocks_over_workers_and_matches_one_process(deployed, prefect_client, workers, assets, s3,
                                                                     client_env, tmp_path):
    from bergson_core.config import BuildConfig

    index = f"s3://{BUCKET}/indexes/fanout"
    cfg = BuildConfig(index=index, model=assets["model"], dataset=assets["corpus"], id_column="id",
                      shard_size=SHARD_SIZE, max_length=64, grad_dtype="float32")
    args = ["build", index, "--model", assets["model"], "--dataset", assets["corpus"], "--id-column", "id",
            "--shard-size", str(SHARD_SIZE), "--max-length", "64", "--grad-dtype", "float32", "--no-progress",
            "--fan-out", "workers", "--blocks", "6"]
    env = dict(client_env, BERGSON_FANOUT_POLL_SECONDS="0.5")

    # the parent starts its 6 blocks (no worker yet, so they wait) and is killed: its children live on
    with open(tmp_path / "parent.log", "wb") as log:
        parent = subprocess.Popen([str(BIN / "bergson"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=str(REPO), start_new_session=True)
    wait_until(lambda: len(_children(prefect_client, cfg)) >= 6, 300, "6 block runs", 0.5, parent, tmp_path / "parent.log")
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait(30)

    for name in ("fan-a", "fan-b", "fan-c"):
        workers(POOL, name, "--limit", "1")  # one block at a time each, as a one-GPU worker would
    r = run_cli(env, *args, timeout=600)  # the rerun adopts the 6 children instead of starting their shards again
    assert r.returncode == 0, r.stdout + r.stderr
    # the children still active when the rerun planned are adopted (workers may have finished some
    # already): it starts no block of its own
    adopted = re.search(r"(\d+) block runs \((\d+) adopted from an earlier run, 0 retried\)", r.stdout)
    assert adopted and adopted.group(1) == adopted.group(2), r.stdout + r.stderr

    children = _children(prefect_client, cfg)
    assert len(children) == 6 and all(c.state.is_completed() for c in children)
    assert sorted(i for c in children for i in c.parameters["shards"]) == list(range(12))  # each shard in one block
    by = {c.labels.get("prefect.worker.name") for c in children}
    assert len(by) >= 2 and by <= {"fan-a", "fan-b", "fan-c"}, by

    assert _grads(s3, "indexes/fanout") == _reference(assets, tmp_path)  # every shard and manifest byte-identical
    versions = s3["client"].list_object_versions(Bucket=BUCKET, Prefix="indexes/fanout/grads/")["Versions"]
    assert len(versions) == 24, "a shard was written twice"  # the bucket is versioned (the deployed fixture)
    summaries = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="indexes/fanout/blocks/")["Contents"]
    assert len(summaries) == 6

    # a rerun finds every shard from one listing and the block summaries: nothing to do, no child started
    again = run_cli(client_env, *args)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert len(_children(prefect_client, cfg)) == 6


def test_fan_out_without_a_server_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    r = run_cli(env, "build", tmp_path / "idx", "--model", tmp_path / "m", "--dataset", tmp_path / "c.jsonl",
                "--fan-out", "workers")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "bergson build: error: --fan-out workers needs a Prefect server with the bergson deployments: start one, "
        "export PREFECT_API_URL and run `bergson deploy`"]
    assert not (tmp_path / "idx").exists()  # nothing written
