"""Test-wide environment (offline hub, Prefect state inside the workspace, no analytics) and the one
Prefect API that every flow test of the session shares."""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / "tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("BERGSON_CACHE", str(ROOT / ".bergson-cache" / "tests"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """One embedded Prefect API (the test harness) for the whole session; its URL is handed to CLI
    subprocesses so they skip starting their own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def one_torch_thread():
    """Tiny models train fastest on one torch thread (two spin against each other on a shared
    2-core box); used as a package-scoped autouse fixture by the packages that train."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
