"""The retry and cache rules of tasks/policy.py, in real Prefect task runs: a transient I/O fault is
retried (and the run then succeeds), a user error or a bug fails at its first attempt; a cache key
changes with each of its parts and with the code version."""

from __future__ import annotations

import pytest
from prefect import flow

from bergson_core.errors import UserError
from tasks import policy
from tasks.policy import RETRIES, cache_key, step_task


def _attempts(exc_factory, failures: int):
    calls = []

    @step_task("flaky")
    def flaky():
        calls.append(1)
        if len(calls) <= failures:
            raise exc_factory()
        return "done"

    @flow
    def run():
        state = flaky.with_options(retry_delay_seconds=0)(return_state=True)
        return "done" if state.is_completed() and state.result() == "done" else state.type.value

    outcome = run()
    return len(calls), outcome


@pytest.mark.parametrize("exc", [ConnectionError, TimeoutError, lambda: OSError(104, "connection reset")])
def test_transient_faults_are_retried(prefect_api, exc):
    calls, outcome = _attempts(exc, failures=RETRIES)
    assert outcome == "done" and calls == RETRIES + 1


@pytest.mark.parametrize("exc", [ValueError, lambda: UserError("bad option"), lambda: FileNotFoundError("x")])
def test_user_errors_and_bugs_fail_at_once(prefect_api, exc):
    calls, outcome = _attempts(exc, failures=1)
    assert outcome == "FAILED" and calls == 1


def test_cache_key_changes_with_every_part_and_the_code_version(monkeypatch):
    parts = ("spec-hash", "s3://bucket/index", 3)
    key = cache_key(*parts)
    assert cache_key(*parts) == key
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] = f"{changed[i]}x"
        assert cache_key(*changed) != key, i
    monkeypatch.setattr(policy, "CODE_VERSION", policy.CODE_VERSION + "-next")
    assert cache_key(*parts) != key
