"""Retry and cache rules shared by every task.

Retries are for transient faults only (network, object store, preemption); a user error or a bug
fails at once. Cache keys are spec hash + where + which shard + code version, never the run id, so
a rerun of a killed flow only does the missing work.
"""

from __future__ import annotations

import hashlib

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
