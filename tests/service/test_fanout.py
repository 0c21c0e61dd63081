"""`bergson build --fan-out workers`: one build spread over the pool's workers as child runs of the
build-shards deployment, against a real `prefect server`, the moto S3 server and three process workers."""

from __future__ import annotations

import time

from .conftest import BUCKET, POOL, run_cli

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


def test_fan_out_spreads_blocks_over_workers_and_matches_one_process(deployed, prefect_client, workers, assets, s3,
                                                                     client_env, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from bergson_core.config import BuildConfig
    from flows.fanout import build_tag

    for name in ("fan-a", "fan-b", "fan-c"):
        workers(POOL, name, "--limit", "1")  # one block at a time each, as a one-GPU worker would
    index = f"s3://{BUCKET}/indexes/fanout"
    t0 = time.monotonic()
    r = run_cli(dict(client_env, BERGSON_FANOUT_POLL_SECONDS="0.5"), "build", index, "--model", assets["model"],
                "--dataset", assets["corpus"], "--id-column", "id", "--shard-size", str(SHARD_SIZE), "--max-length",
                "64", "--grad-dtype", "float32", "--no-progress", "--fan-out", "workers", "--blocks", "6", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    seconds = time.monotonic() - t0
    assert "6 block runs (0 adopted from an earlier run, 0 retried)" in r.stdout + r.stderr, r.stdout + r.stderr

    cfg = BuildConfig(index=index, model=assets["model"], dataset=assets["corpus"], id_column="id",
                      shard_size=SHARD_SIZE, max_length=64, grad_dtype="float32")
    children = prefect_client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[build_tag(cfg)])))
    assert len(children) == 6 and all(c.state.is_completed() for c in children)
    assert sorted(i for c in children for i in c.parameters["shards"]) == list(range(12))  # each shard in one block
    by = {c.labels.get("prefect.worker.name") for c in children}
    assert len(by) >= 2 and by <= {"fan-a", "fan-b", "fan-c"}, (by, seconds)

    stored = _grads(s3, "indexes/fanout")
    assert stored == _reference(assets, tmp_path)  # every shard and manifest byte-identical
    summaries = [k for k in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="indexes/fanout/blocks/")["Contents"]]
    assert len(summaries) == 6

    # a rerun finds every shard from one listing and the block summaries: nothing to do, no child started
    again = run_cli(client_env, "build", index, "--model", assets["model"], "--dataset", assets["corpus"], "--id-column",
                    "id", "--shard-size", str(SHARD_SIZE), "--max-length", "64", "--grad-dtype", "float32",
                    "--no-progress", "--fan-out", "workers", "--blocks", "6", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(prefect_client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[build_tag(cfg)])))) == 6
