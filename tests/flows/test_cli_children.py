"""`bergson` with its own embedded Prefect API leaves no process behind: not after success, not
after a user error, not after SIGKILL (which runs no exit handler)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="scans /proc (Linux)")


def _marked(marker: str) -> list[tuple[int, str]]:
    """Processes whose environment carries the marker: everything the CLI started inherits it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append((int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")[:120]))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _settled(marker: str, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


@pytest.fixture
def embedded_env(tmp_path_factory):
    """The CLI on its own embedded API (no PREFECT_API_URL), Prefect state in a private folder."""
    home = tmp_path_factory.getbasetemp() / "embedded-prefect"
    marker = f"BERGSON_TEST_MARKER_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               BERGSON_CHILD_MARKER=marker)
    return env, marker


def _exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "bergson")


@pytest.mark.parametrize("case", ["success", "user error"])
def test_no_child_outlives_the_cli(workspace, tmp_path, embedded_env, case):
    env, marker = embedded_env
    args = ["build", str(tmp_path / "idx"), "--model", workspace["model"], "--dataset", workspace["corpus"],
            "--no-progress"]
    if case == "user error":
        args += ["--text-column", "body"]
    proc = subprocess.run([_exe(), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == (0 if case == "success" else 2), proc.stderr
    assert _settled(marker) == []


def test_sigkill_takes_the_api_server_along(workspace, tmp_path, embedded_env):
    env, marker = embedded_env
    args = ["build", str(tmp_path / "idx"), "--model", workspace["model"], "--dataset", workspace["corpus"],
            "--no-progress"]
    proc = subprocess.Popen([_exe(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any("uvicorn" in cmd for _, cmd in _marked(marker)):
            assert proc.poll() is None, "the build ended before its API server was seen"
            assert time.monotonic() < deadline, "no embedded API server started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _settled(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, _ in _marked(marker):  # never leave a stray server to later tests
            os.kill(pid, signal.SIGKILL)
