"""Retry and cache rules shared by every task: `step_task` and `gpu_task` are the two decorators
the task modules use, so the rules live here only.

Retries are for transient faults only (network, object store, preemption); a user error or a bug
fails at once. Cache keys are spec hash + where + which shard + code version, never the run id, so
a rerun of a killed flow only does the missing work.
"""

from __future__ import annotations

import hashlib

from prefect import task
from prefect.tasks import exponential_backoff

from bergson_core.config import CODE_VERSION
from bergson_core.errors import TransientError, UserError
from bergson_core.secrets import register_resolver

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)
TRANSIENT = (TransientError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (UserError, FileNotFoundError, FileExistsError, PermissionError)):
        return False  # a missing bucket or file, or denied access: retrying cannot fix it
    if isinstance(exc, TRANSIENT):
        return True
    # botocore/aiohttp faults surface as OSError subclasses or carry these names
    name = type(exc).__name__
    return isinstance(exc, OSError) or name.endswith(("ConnectionError", "TimeoutError", "EndpointConnectionError"))


def retry_transient(task, task_run, state) -> bool:
    """retry_condition_fn: continue to the retry policy only for transient faults."""
    try:
        state.result()
    except BaseException as exc:  # the failed state re-raises its exception here
        return is_transient(exc)
    return False


def cache_key(*parts: object) -> str:
    blob = "|".join(map(str, (*parts, CODE_VERSION)))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _load_secret(name: str) -> str:
    """A Prefect Secret block's value: storage options name secrets ("prefect-secret:NAME")."""
    from prefect.blocks.system import Secret

    return Secret.load(name, _sync=True).get()


register_resolver(_load_secret)


def step_task(name: str, **options):
    """Decorator of a task that retries transient faults only (a user error or a bug fails at once)."""
    return task(name=name, retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient,
                **options)


def gpu_task(name: str, *, cache_key_fn=None, cache_policy=None):
    """Decorator of a GPU-bound task (model passes): tagged `gpu`, which the `bergson deploy --gpu-limit`
    concurrency limit gates and the Dask / Ray runners turn into a GPU request (flows/runners.py);
    retries for transient faults only; and one of three cache rules:

    - cache_key_fn: the result is keyed by what the task stores (`cache_key(...)`: spec hash, where,
      which shard or run, code version) and persisted as JSON, so a rerun of a killed flow, even a new
      flow run, skips the finished work (flows/mapping.py redoes one whose files were deleted since);
    - cache_policy=NO_CACHE: the store alone decides what is reused;
    - neither: Prefect's default cache (inputs and task source, within one flow run); the task
      itself reuses what it finds in the store.
    """
    options: dict = {}
    if cache_key_fn is not None:
        options.update(cache_key_fn=cache_key_fn, persist_result=True, result_serializer="json")
    if cache_policy is not None:
        options["cache_policy"] = cache_policy
    return step_task(name, tags=["gpu"], **options)
