"""Which Prefect task runner fans out the shard tasks: a setting, not code.

    BERGSON_TASK_RUNNER=threads   (default) Prefect's ThreadPoolTaskRunner in the flow's process
    BERGSON_TASK_RUNNER=dask      prefect-dask: a LocalCluster of BERGSON_DASK_WORKERS processes, or
                                  the running scheduler at BERGSON_DASK_ADDRESS (tcp://host:8786)
    BERGSON_TASK_RUNNER=ray       prefect-ray (install it separately): a local Ray, or BERGSON_RAY_ADDRESS

The variables are read when the flow module is imported, so a deployment picks its runner through
the work pool's or the deployment's `env` job variable, and the CLI through the shell environment.
Tasks tagged `gpu` ask Dask for BERGSON_GPUS_PER_TASK units of the worker resource `GPU` (start GPU
workers with `dask worker --resources GPU=1`) and Ray for that many `num_gpus`; 0 (the default)
asks for none, which is right for CPU runs. Shards are byte-identical whichever runner computes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bergson_core.errors import ConfigError


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERGSON_", extra="ignore")

    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads", description="Task runner of the shard fan-out: threads, dask or ray."
    )
    max_workers: int | None = Field(
        None, gt=0, description="Threads of the thread-pool runner (default: the usable cores, at least 4)."
    )
    dask_address: str | None = Field(
        None, description="Address of a running Dask scheduler; unset = start a LocalCluster."
    )
    dask_workers: int = Field(2, gt=0, description="Worker processes of the LocalCluster.")
    dask_threads_per_worker: int = Field(1, gt=0, description="Threads per LocalCluster worker.")
    gpus_per_task: float = Field(
        0.0, ge=0, description="GPU resource units a `gpu`-tagged task asks of Dask/Ray (0 = none)."
    )
    ray_address: str | None = Field(None, description="Address of a running Ray cluster; unset = local Ray.")


def default_threads() -> int:
    """Threads of the default thread-pool runner: the usable cores, at least 4 (shard tasks only
    compute while they hold one of the few model replicas; more threads would just wait)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(4, cores)


def task_runner(settings: RunnerSettings | None = None):
    """A Prefect task runner built from the settings (default: from the environment)."""
    try:
        s = settings or RunnerSettings()
    except ValueError as e:  # pydantic's ValidationError: name the variable that is wrong
        raise ConfigError(f"task runner settings (BERGSON_* environment variables): {e}") from None
    if s.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        # bounded by default: every thread that ran a shard keeps its own malloc arena with that
        # shard's freed batch memory, so one thread per shard made peak memory grow with the corpus
        return ThreadPoolTaskRunner(max_workers=s.max_workers or default_threads())
    if s.task_runner == "dask":
        return _dask_runner(s)
    return _ray_runner(s)


def _dask_runner(s: RunnerSettings):
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("BERGSON_TASK_RUNNER=dask needs prefect-dask: pip install prefect-dask") from None

    class GpuDaskTaskRunner(DaskTaskRunner):
        """DaskTaskRunner that annotates `gpu`-tagged tasks with a GPU resource request."""

        def __init__(self, *args, gpus_per_task: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.gpus_per_task = gpus_per_task

        def duplicate(self):
            return type(self)(
                address=self.address, cluster_class=self.cluster_class, cluster_kwargs=self.cluster_kwargs,
                adapt_kwargs=self.adapt_kwargs, client_kwargs=self.client_kwargs,
                performance_report_path=self.performance_report_path, gpus_per_task=self.gpus_per_task,
            )

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            if self.gpus_per_task and "gpu" in (task.tags or ()):
                with dask.annotate(resources={"GPU": self.gpus_per_task}):
                    return super().submit(task, parameters, wait_for, dependencies)
            return super().submit(task, parameters, wait_for, dependencies)

    if s.dask_address:
        return GpuDaskTaskRunner(address=s.dask_address, gpus_per_task=s.gpus_per_task)
    cluster_kwargs = {
        "n_workers": s.dask_workers,
        "threads_per_worker": s.dask_threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    if s.gpus_per_task:
        cluster_kwargs["resources"] = {"GPU": 1}
    return GpuDaskTaskRunner(cluster_kwargs=cluster_kwargs, gpus_per_task=s.gpus_per_task)


def _ray_runner(s: RunnerSettings):
    try:
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        raise ConfigError("BERGSON_TASK_RUNNER=ray needs prefect-ray: pip install prefect-ray") from None

    class GpuRayTaskRunner(RayTaskRunner):
        """RayTaskRunner that asks Ray for num_gpus for `gpu`-tagged tasks."""

        def __init__(self, *args, gpus_per_task: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.gpus_per_task = gpus_per_task

        def duplicate(self):
            return type(self)(address=self.address, init_kwargs=self.init_kwargs, gpus_per_task=self.gpus_per_task)

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            if self.gpus_per_task and "gpu" in (task.tags or ()):
                with remote_options(num_gpus=self.gpus_per_task):
                    return super().submit(task, parameters, wait_for, dependencies)
            return super().submit(task, parameters, wait_for, dependencies)

    return GpuRayTaskRunner(address=s.ray_address, gpus_per_task=s.gpus_per_task)
