"""Every task follows tasks/policy.py: retries for transient faults only, and every GPU-bound task
is a `gpu_task` (tag `gpu`)."""

from __future__ import annotations

import importlib

from prefect.tasks import Task

GPU_BOUND = {"extract-shard", "stats-shard", "retrain-subset", "query-gradients", "tracin-query-gradients",
             "magic-part", "source-query-gradients", "score-recomputed", "plan-build"}


def _tasks() -> dict[str, Task]:
    out = {}
    for name in ("build", "curvature", "dynamics", "evaluate", "plan", "score", "source"):
        mod = importlib.import_module(f"tasks.{name}")
        out.update({v.name: v for v in vars(mod).values() if isinstance(v, Task)})
    return out


def test_every_task_retries_transient_faults_only_and_gpu_tasks_are_tagged():
    from tasks.policy import RETRIES, retry_transient

    tasks = _tasks()
    assert GPU_BOUND <= set(tasks)
    for name, t in tasks.items():
        assert t.retries == RETRIES and t.retry_condition_fn is retry_transient, name
        assert ("gpu" in t.tags) == (name in GPU_BOUND), name
    for name in ("extract-shard", "stats-shard", "retrain-subset"):  # keyed by what they store, kept as JSON
        assert tasks[name].cache_key_fn is not None and tasks[name].persist_result, name
