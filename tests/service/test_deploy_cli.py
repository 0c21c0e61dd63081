"""`bergson deploy` refuses what cannot work with one line, and is idempotent."""

from __future__ import annotations

import pytest

from flows.cli import main

from .conftest import GPU_LIMIT, POOL, free_port


@pytest.fixture
def api(request):
    """Run the CLI in-process against a given API URL (None = no server configured)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def use(url):
        ctx = temporary_settings({PREFECT_API_URL: url} if url else {}, restore_defaults={PREFECT_API_URL} if not url
                                 else None)
        ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))

    return use


def test_needs_a_server(api, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    api(None)
    assert main(["deploy"]) == 2
    assert "needs a running Prefect server" in capsys.readouterr().err


def test_unreachable_server(api, capsys):
    api(f"http://127.0.0.1:{free_port()}/api")
    assert main(["deploy", "--skip-deployments"]) == 2
    assert "cannot reach the Prefect API" in capsys.readouterr().err


def test_results_must_be_a_url_and_rerun_is_idempotent(deployed, prefect_server, api, capsys, prefect_client):
    api(prefect_server["api"])
    assert main(["deploy", "--skip-deployments", "--pool", POOL, "--results", "/tmp/results"]) == 2
    assert "--results must be a URL" in capsys.readouterr().err
    assert main(["deploy", "--skip-deployments", "--pool", POOL, "--gpu-limit", str(GPU_LIMIT)]) == 0
    out = capsys.readouterr().out
    assert f"{POOL} (process, exists)" in out
    assert prefect_client.read_concurrency_limit_by_tag("gpu").concurrency_limit == GPU_LIMIT
