"""Fixtures of the evaluation tests.

Tiny models train fastest on one CPU thread (two threads spin against each other, worse on a shared
box), so every test here runs with torch.set_num_threads(1) and the old value comes back after.
The Prefect test harness (a temporary API and database) is started once per session and only by
the flow tests that ask for it.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
