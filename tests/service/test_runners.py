"""The shard fan-out on a local Dask cluster of 2 processes writes byte-identical shards to the
default thread pool; the runner is chosen by settings (BERGSON_TASK_RUNNER and friends)."""

from __future__ import annotations

import os

import pytest

from bergson_core.config import BuildConfig
from bergson_core.errors import ConfigError
from flows.runners import RunnerSettings, task_runner


def _files(folder) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def test_runner_from_environment(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    for k in list(os.environ):
        if k.startswith("BERGSON_") and k != "BERGSON_CACHE":
            monkeypatch.delenv(k)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    monkeypatch.setenv("BERGSON_TASK_RUNNER", "dask")
    monkeypatch.setenv("BERGSON_DASK_WORKERS", "2")
    monkeypatch.setenv("BERGSON_GPUS_PER_TASK", "1")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["processes"]
    assert runner.cluster_kwargs["resources"] == {"GPU": 1} and runner.gpus_per_task == 1
    assert runner.duplicate().gpus_per_task == 1  # Prefect duplicates the runner per flow run
    monkeypatch.setenv("BERGSON_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    assert task_runner().address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("BERGSON_TASK_RUNNER", "spark")
    with pytest.raises(ConfigError, match="task_runner"):
        task_runner()


def test_dask_cluster_shards_identical_to_thread_pool(prefect_server, assets, tmp_path, monkeypatch):
    import distributed
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.build import build_index

    # the Dask worker processes inherit the environment: they report task runs to the same server
    monkeypatch.setenv("PREFECT_API_URL", prefect_server["api"])
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    common = dict(model=assets["model"], dataset=assets["corpus"], id_column="id", shard_size=22, max_length=64,
                  grad_dtype="float32", progress=False)
    threads_cfg = BuildConfig(index=str(tmp_path / "threads"), **common)
    dask_cfg = BuildConfig(index=str(tmp_path / "dask"), **common)

    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}):
        threads = build_index.with_options(task_runner=task_runner(RunnerSettings()))(threads_cfg)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            settings = RunnerSettings(task_runner="dask", dask_address=cluster.scheduler_address)
            with distributed.get_task_stream(client) as stream:
                on_dask = build_index.with_options(task_runner=task_runner(settings))(dask_cfg)
            worker_pids = set(client.run(os.getpid).values())
            workers = set(client.scheduler_info()["workers"])

    assert threads["shards_computed"] == on_dask["shards_computed"] == threads["shards"] == 6
    # the shards ran in the cluster's worker processes (which of the two gets work is Dask's choice:
    # requiring both made the test fail whenever one worker took every shard)
    assert stream.data and {t["worker"] for t in stream.data} <= workers
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    a, b = _files(tmp_path / "threads"), _files(tmp_path / "dask")
    assert sorted(a) == sorted(b) and len([k for k in a if k.endswith(".arrow")]) == 6
    for name in a:  # shards, manifests and index.json
        assert a[name] == b[name], name


def test_ray_shards_identical_to_thread_pool(prefect_server, assets, tmp_path, monkeypatch):
    """Issue 12 item 12: the Ray runner for real (a local Ray of 2 worker processes, started by the
    runner as a deployment would with BERGSON_TASK_RUNNER=ray), shards byte-identical to threads."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.build import build_index

    monkeypatch.setenv("PREFECT_API_URL", prefect_server["api"])  # Ray's workers report to the same server
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    common = dict(model=assets["model"], dataset=assets["corpus"], id_column="id", shard_size=22, max_length=64,
                  grad_dtype="float32", progress=False)
    threads_cfg = BuildConfig(index=str(tmp_path / "threads"), **common)
    ray_cfg = BuildConfig(index=str(tmp_path / "ray"), **common)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server["api"]}):
            threads = build_index.with_options(task_runner=task_runner(RunnerSettings()))(threads_cfg)
            runner = task_runner(RunnerSettings(task_runner="ray", ray_address="auto"))
            on_ray = build_index.with_options(task_runner=runner)(ray_cfg)
        assert type(runner).__name__ == "GpuRayTaskRunner" and ray.is_initialized()
    finally:
        ray.shutdown()
    assert threads["shards_computed"] == on_ray["shards_computed"] == threads["shards"] == 6
    a, b = _files(tmp_path / "threads"), _files(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len([k for k in a if k.endswith(".arrow")]) == 6
    for name in a:  # shards, manifests and index.json
        assert a[name] == b[name], name
