"""End to end against real processes: `prefect server`, a moto S3 server, process workers.

`bergson deploy` registers everything, runs are triggered by deployment, outputs land in the bucket;
then a worker is killed mid-build, a fresh one takes over the retried run, and the shards finished
before the kill are not written again (S3 object versions and timestamps unchanged).
"""

from __future__ import annotations

import json
import re

from .conftest import BUCKET, GPU_LIMIT, POOL, prefect_cli, run_cli, wait_until

SHARD_SIZE = 6  # 132 documents -> 22 shards


def _build_params(assets, index: str) -> dict:
    return {"config": {"index": index, "model": assets["model"], "dataset": assets["corpus"], "id_column": "id",
                       "shard_size": SHARD_SIZE, "max_length": 64, "grad_dtype": "float32", "progress": False}}


def _objects(s3, prefix: str) -> dict[str, dict]:
    out = {}
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


def _versions(s3, prefix: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for page in s3["client"].get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        for v in page.get("Versions", []):
            out.setdefault(v["Key"], []).append(v["VersionId"])
    return out


def _manifests(s3, index_prefix: str) -> list[str]:
    return sorted(k for k in _objects(s3, index_prefix + "/grads/") if k.endswith(".json"))


def _task_states(prefect_client, flow_run_id, prefix: str = "extract-shard") -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = prefect_client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [tr.state.name for tr in runs if tr.name.startswith(prefix) and tr.state]


def _summary_value(prefect_client, flow_run_id, what: str) -> int:
    """A number from the markdown run-summary artifact that a flow run left."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    arts = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["markdown"])))
    (summary,) = [a for a in arts if a.key and a.key.endswith("-summary")]
    return int(re.search(rf"\| {what} \| ([\d,]+) \|", summary.data).group(1).replace(",", ""))


def test_deploy_registers_pool_storage_limit_and_deployments(deployed, prefect_client):
    pool = prefect_client.read_work_pool(POOL)
    env = pool.base_job_template["variables"]["properties"]["env"]["default"]
    assert pool.type == "process" and env["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json"

    storage = prefect_client.read_server_default_result_storage()
    block = prefect_client.read_block_document(storage.default_result_storage_block_id)
    assert block.data["basepath"] == f"s3://{BUCKET}/prefect-results"

    limit = prefect_client.read_concurrency_limit_by_tag("gpu")
    assert limit.concurrency_limit == GPU_LIMIT

    names = {d.name for d in prefect_client.read_deployments()}
    assert {"build-index", "score-index", "fit-preconditioner", "trackstar", "ekfac", "validate"} <= names
    build = prefect_client.read_deployment_by_name("build-index/build-index")
    score = prefect_client.read_deployment_by_name("score-index/score-index")
    assert build.entrypoint == "flows.build:build_index" and score.entrypoint == "flows.score:score"
    assert build.pull_steps == [] and build.enforce_parameter_schema
    assert build.work_pool_name == POOL
    # the dashboard form: the pydantic config with its descriptions and defaults
    fields = build.parameter_openapi_schema["definitions"]["BuildConfig"]["properties"]
    assert fields["shard_size"]["default"] == 1000 and fields["shard_size"]["description"]
    assert "ScoreConfig" in score.parameter_openapi_schema["definitions"]
    # the nightly corpus-wide run is registered, but off
    (nightly,) = [s for s in build.schedules if s.slug == "nightly-corpus-build"]
    assert not nightly.active and nightly.schedule.cron == "0 2 * * *"
    assert nightly.parameters["config"]["index"] == "s3://bergson/indexes/nightly"


def test_build_and_score_by_deployment(deployed, prefect_client, workers, assets, s3, service_root, client_env):
    from prefect.deployments import run_deployment

    worker = workers(POOL, "worker-a")
    index = f"s3://{BUCKET}/indexes/e2e"
    run = run_deployment("build-index/build-index", parameters=_build_params(assets, index), timeout=240,
                         poll_interval=1)
    assert run.state.is_completed(), f"{run.state}\n{worker.tail()}"
    shards = -(-assets["documents"] // SHARD_SIZE)
    keys = _objects(s3, "indexes/e2e/")
    assert "indexes/e2e/index.json" in keys
    assert len([k for k in keys if k.endswith(".arrow")]) == shards
    assert len(_manifests(s3, "indexes/e2e")) == shards

    scored = run_deployment("score-index/score-index", timeout=240, poll_interval=1, parameters={
        "config": {"index": index, "queries": assets["queries"], "top_k": 3, "progress": False}})
    assert scored.state.is_completed(), f"{scored.state}\n{worker.tail()}"
    import pyarrow.parquet as pq
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3["endpoint"]})
    table = pq.read_table(f"{BUCKET}/indexes/e2e/scores/queries/topk.parquet", filesystem=fs)
    assert table.num_rows == 2 * 3

    # task results and cache records went to the bucket as JSON (every object parses), not to the
    # worker's home folder; flow return values are stored as bare JSON documents
    results = _objects(s3, "prefect-results/")
    assert len(results) >= shards
    records = [json.loads(s3["client"].get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in results]
    serializers = {r["metadata"]["serializer"]["type"] for r in records if "metadata" in r}
    assert serializers == {"json"}, serializers
    assert not (service_root / "worker-a-home" / "storage").exists()

    # `bergson status` on the bucket: complete, scores present, the build run found on the server
    status = run_cli(client_env, "status", index, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["complete"] and report["shards_complete"] == shards
    assert report["scores"] == [{"name": "queries", "complete": True, "files": report["scores"][0]["files"]}]
    assert report["runs"][0]["state"] == "Completed" and report["runs"][0]["id"] == str(run.id)

    # dashboard artifacts: progress, run summary, top-k table
    keys = {a.key for a in prefect_client.read_artifacts() if a.key}
    assert any(k.endswith("-summary") for k in keys) and any(k.endswith("-progress") for k in keys)
    assert any(k.startswith("topk-") for k in keys)


def test_killed_worker_resumes_without_recomputing(deployed, prefect_client, workers, assets, s3, client_env):
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    index_prefix = "indexes/resume"
    shards = -(-assets["documents"] // SHARD_SIZE)
    worker = workers(POOL, "worker-b")
    # two shards at a time through the `gpu` limit, so that the kill lands mid-build
    prefect_client.create_concurrency_limit(tag="gpu", concurrency_limit=2)
    try:  # the shared server's `gpu` limit is restored even when an assertion below fails
        run = run_deployment("build-index/build-index", timeout=0,
                             parameters=_build_params(assets, f"s3://{BUCKET}/{index_prefix}"))
        wait_until(lambda: len(_manifests(s3, index_prefix)) >= 3 and "Completed" in _task_states(prefect_client, run.id),
                   180, "3 finished shards", 0.2, worker.proc, worker.log)
        assert str(run.id) in worker.log.read_text(), "the run was not executed by worker-b"
        worker.kill()  # the machine disappears mid-run
        completed_before = _task_states(prefect_client, run.id).count("Completed")
        done = _manifests(s3, index_prefix)
        assert 3 <= len(done) < shards, "the build finished before the kill: use more or bigger shards"
        before = {k: (o["ETag"], o["LastModified"]) for k, o in _objects(s3, index_prefix + "/grads/").items()
                  if k.replace(".arrow", ".json") in done}
        assert len(before) == 2 * len(done)

        # the operator's view: the run is stuck in Running; mark it crashed, free the slots its tasks held
        # and retry it (what the UI's "Change state" and "Retry" buttons do)
        assert prefect_client.read_flow_run(run.id).state.is_running()
        prefect_client.set_flow_run_state(run.id, Crashed(message="worker-b was killed"), force=True)
    finally:
        prefect_client.create_concurrency_limit(tag="gpu", concurrency_limit=GPU_LIMIT)
    for cmd in (["concurrency-limit", "reset", "gpu"], ["flow-run", "retry", str(run.id)]):
        r = prefect_cli(client_env, *cmd)
        assert r.returncode == 0, r.stdout + r.stderr

    fresh = workers(POOL, "worker-c")
    final = wait_until(lambda: (s := prefect_client.read_flow_run(run.id).state).is_final() and s, 240,
                       "the retried run to finish", 1, fresh.proc, fresh.log)
    assert final.is_completed(), f"{final}\n{fresh.tail()}"
    assert str(run.id) in fresh.log.read_text()
    assert len(_manifests(s3, index_prefix)) == shards
    after = _objects(s3, index_prefix + "/grads/")
    versions = _versions(s3, index_prefix + "/grads/")
    for key, (etag, modified) in before.items():
        assert (after[key]["ETag"], after[key]["LastModified"]) == (etag, modified), key
        assert len(versions[key]) == 1, f"{key} was written again"
    # the retried plan read the store (the fresh worker's home is empty): finished shards were not
    # scheduled again, and the summary counts them as skipped
    skipped = _summary_value(prefect_client, run.id, "shards skipped")
    assert skipped >= completed_before
    assert _summary_value(prefect_client, run.id, "shards computed") == shards - skipped
    # every manifest was written once: no shard was completed twice (a shard in flight at the kill
    # may have left a data file without manifest, which the retry rewrites)
    assert all(len(v) == 1 for k, v in versions.items() if k.endswith(".json")), versions
    assert _summary_value(prefect_client, run.id, "shards") == shards
