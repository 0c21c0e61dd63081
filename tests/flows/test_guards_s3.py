"""Issue 12 on an object store: the lease's conditional writes on S3, outages ridden out within a
retry budget and then one line naming the endpoint, a missing bucket refused at once."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from bergson_core import lease as L
from bergson_core.config import BuildConfig
from bergson_core.errors import StoreError, StoreUnavailable
from bergson_core.index.store import Index

from .outage import S3Outage


@pytest.fixture(scope="module")
def s3():
    outage = S3Outage()
    yield outage
    outage.stop()


@pytest.fixture
def fast_fail(s3):
    """s3fs's own retries off, so the outer retry budget is what is tested."""
    return {**s3.options, "config_kwargs": {"retries": {"max_attempts": 1}}}


def test_lease_on_s3_uses_conditional_writes(s3):
    ix = Index("s3://bergson-test/leased", s3.options)
    first = L.Lease(ix, "run-1")
    first.acquire()
    with pytest.raises(L.IndexBusyError, match="run-1"):
        L.Lease(Index(ix.url, s3.options), "run-2").acquire()
    # an If-Match with a stale etag loses: nobody overwrites a lease they did not read
    rec, token = first._read()
    first.beat()
    assert first._replace(b'{"run_id": "late"}', token) is False
    assert json.loads(ix.fs.cat_file(first.path))["run_id"] == "run-1"
    first.release()
    stale = {"run_id": "gone", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 600, "ttl": 60}
    ix.fs.pipe_file(first.path, json.dumps(stale).encode())
    taker = L.Lease(Index(ix.url, s3.options), "run-3")
    taker.acquire()
    assert json.loads(ix.fs.cat_file(first.path))["run_id"] == "run-3"
    taker.release()


def test_missing_bucket_fails_at_once_with_one_line(s3, monkeypatch):
    monkeypatch.setenv("BERGSON_STORE_RETRY_SECONDS", "120")
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist at http://127.0.0.1"):
        L.Lease(Index("s3://no-such-bucket/idx", s3.options)).acquire()
    assert time.monotonic() - t0 < 10  # not retried as transient


def test_short_outage_is_ridden_out(workspace, s3, fast_fail, tmp_path, monkeypatch):
    """Without Prefect (no task retries): the store's own retry budget carries the build through."""
    from bergson_core.index.build import build_shard, prepare_build

    monkeypatch.setenv("BERGSON_CACHE", str(tmp_path / "cache"))
    common = dict(model=workspace["model"], dataset=workspace["corpus"], shard_size=6, projection_dim=4,
                  grad_dtype="float32", progress=False)
    remote = BuildConfig(index="s3://bergson-test/outage", storage_options=fast_fail, **common)
    local = BuildConfig(index=str(tmp_path / "local"), **common)
    for cfg in (local, remote):
        prepare_build(cfg)
    s3.proxy.down()
    threading.Timer(6.0, s3.proxy.up).start()  # longer than one attempt, far shorter than the budget
    t0 = time.monotonic()
    for cfg in (remote, local):
        for shard in prepare_build(cfg).missing():
            build_shard(cfg, *shard)
    assert time.monotonic() - t0 > 5.5
    fs = Index(remote.index, fast_fail).fs
    for name in sorted(os.listdir(tmp_path / "local" / "grads")):
        assert fs.cat_file(f"bergson-test/outage/grads/{name}") == (tmp_path / "local" / "grads" / name).read_bytes()


def test_long_outage_gives_up_with_one_line_naming_the_endpoint(run_cli, workspace, s3, fast_fail, tmp_path):
    s3.proxy.down()
    try:
        proc = run_cli("build", "s3://bergson-test/long", "--model", workspace["model"], "--dataset",
                       workspace["corpus"], "--storage-options", json.dumps(fast_fail), "--no-progress",
                       env_extra={"BERGSON_STORE_RETRY_SECONDS": "3"})
    finally:
        s3.proxy.up()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert s3.endpoint in lines[0] and "rerunning resumes" in lines[0], lines[0]
    with pytest.raises(StoreUnavailable):  # the same from the library, and quickly with a small budget
        os.environ["BERGSON_STORE_RETRY_SECONDS"] = "1"
        try:
            s3.proxy.down()
            Index("s3://bergson-test/long", fast_fail).exists()
        finally:
            s3.proxy.up()
            del os.environ["BERGSON_STORE_RETRY_SECONDS"]


def _api_records(flow_run_id) -> str:
    """Everything the Prefect API holds about a flow run, as one JSON text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as c:
        run = c.read_flow_run(flow_run_id)
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = c.read_artifacts()
    parts = [run.model_dump_json()] + [t.model_dump_json() for t in tasks]
    parts += [entry.model_dump_json() for entry in logs] + [a.model_dump_json() for a in artifacts]
    return "\n".join(parts)


def test_credentials_are_never_stored(prefect_api, workspace, s3, tmp_path, monkeypatch):
    """A key given as a storage option, and a secret named by a Prefect Secret block, reach S3 but
    appear nowhere in the API's records of the runs or in the index."""
    from prefect.blocks.system import Secret

    from bergson_core.config import ScoreConfig
    from flows.build import build_index
    from flows.score import score

    monkeypatch.setenv("BERGSON_CACHE", str(tmp_path / "cache"))
    key, secret = "AKIACANARYKEY12345", "canary-secret-value-67890"
    Secret(value=secret).save("bergson-canary", overwrite=True)
    opts = {**s3.options, "key": key, "secret": "prefect-secret:bergson-canary"}
    cfg = BuildConfig(index="s3://bergson-test/secret-idx", model=workspace["model"], dataset=workspace["corpus"],
                      shard_size=12, projection_dim=2, storage_options=opts, progress=False)
    runs = [build_index(cfg, return_state=True), score(ScoreConfig(index=cfg.index, queries=workspace["queries"],
                                                                   storage_options=opts), return_state=True)]
    assert all(r.is_completed() for r in runs)
    for state in runs:
        records = _api_records(state.state_details.flow_run_id)
        assert "secret-idx" in records  # the records were found
        assert key not in records and secret not in records
        assert "**redacted**" in records and "prefect-secret:bergson-canary" in records
    fs = Index(cfg.index, opts).fs
    stored = b"".join(fs.cat_file(p) for p in fs.find("bergson-test/secret-idx"))
    assert len(stored) > 1000 and key.encode() not in stored and secret.encode() not in stored
