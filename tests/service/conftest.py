"""Real running parts for the service tests: a `prefect server` subprocess, a moto S3 server, process
workers, and a tiny model + corpus. Everything listens on 127.0.0.1 and is torn down with bounded waits.

The fixtures are session-scoped (only built when a service test asks for them): the servers start once
(about 10-15 s on 2 cores) for all of tests/service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bergson_core.model.tiny import save_tiny

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
BUCKET = "bergson-e2e"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
WORDS = ["apple", "river", "stone", "cloud", "music", "garden", "engine", "forest", "silver", "window",
         "planet", "bread", "winter", "candle", "harbor", "violin", "copper", "meadow", "lantern", "falcon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.25, proc=None, log: Path | None = None):
    """Poll check() until it returns a truthy value; fail with the log's tail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(interval)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    state = f" (process exited with {proc.returncode})" if proc is not None and proc.poll() is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{state}\n{tail}")


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        w = [WORDS[(i * k + k) % len(WORDS)] for k in (1, 3, 7, 11)]
        out.append(f"the {w[0]} and the {w[1]} near a {w[2]} by the {w[3]} " * (1 + i % 3))
    return out


@pytest.fixture(scope="session")
def service_root(tmp_path_factory) -> Path:  # noqa: D103
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def s3(service_root):
    """A moto S3 server on 127.0.0.1 with one bucket; fake credentials in this process's env."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
    mp = pytest.MonkeyPatch()  # in this process too: s3fs/boto3 clients of the tests
    for k, v in env.items():
        mp.setenv(k, v)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield {"endpoint": endpoint, "env": env, "client": client, "bucket": BUCKET}
    finally:
        mp.undo()
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(service_root):
    """`prefect server start` on a free loopback port, with its own PREFECT_HOME and database."""
    port = free_port()
    home = service_root / "server-home"
    home.mkdir()
    log = service_root / "server.log"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    env.pop("PREFECT_API_URL", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        import httpx

        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 120, "prefect server health", 0.5, proc, log)
        yield {"api": api, "log": log}
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def client_env(service_root, prefect_server, s3):
    """Environment of every subprocess (CLI, workers): the server, the fake S3, offline hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "BERGSON_"))}
    env.update(s3["env"])
    env.update(
        PREFECT_API_URL=prefect_server["api"],
        PREFECT_HOME=str(service_root / "client-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        BERGSON_CACHE=str(service_root / "client-cache"),
    )
    return env


@pytest.fixture
def prefect_client(prefect_server):
    """A sync Prefect client of the test server (settings scoped to the module)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}):
        with get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="session")
def assets(service_root, s3):
    """A tiny GPT-2 on local disk; the corpus and queries on the S3 store."""
    docs = texts(132)
    queries = [docs[5], "the violin and the falcon"]
    model = save_tiny(str(service_root / "model"), "gpt2", docs + queries, hidden=32, layers=2)
    body = "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    s3["client"].put_object(Bucket=BUCKET, Key="data/corpus.jsonl", Body=body.encode())
    qbody = "".join(json.dumps({"text": t}) + "\n" for t in queries)
    s3["client"].put_object(Bucket=BUCKET, Key="data/queries.jsonl", Body=qbody.encode())
    return {"model": model, "corpus": f"s3://{BUCKET}/data/corpus.jsonl",
            "queries": f"s3://{BUCKET}/data/queries.jsonl", "documents": len(docs)}


class Worker:
    """A `prefect worker start` subprocess in its own process group (so its flow runs die with it)."""

    def __init__(self, root: Path, env: dict, pool: str, name: str, *extra: str):
        self.log = root / f"{name}.log"
        env = dict(env, PREFECT_HOME=str(root / f"{name}-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                   PREFECT_WORKER_PREFETCH_SECONDS="1", PREFECT_LOGGING_LEVEL="INFO",
                   BERGSON_CACHE=str(root / f"{name}-cache"))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name, "--type", "process", *extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(root))

    def tree(self) -> list:
        """The worker and every process below it (flow runs run in their own sessions)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the worker and all its descendants at once: a machine that disappears."""
        import psutil

        procs = self.tree()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM the worker (it cancels its runs), then kill whatever is left below it."""
        import psutil

        procs = self.tree()
        stop_process(self.proc)
        alive = [p for p in procs if p.is_running()]
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""


@pytest.fixture
def workers(service_root, client_env):
    """Start workers for one test; all of them are stopped when the test ends, passed or failed."""
    started: list[Worker] = []

    def start(pool: str, name: str, *extra: str) -> Worker:  # extra: more `prefect worker start` flags
        w = Worker(service_root, client_env, pool, name, *extra)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.stop()


def run_cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bergson"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def prefect_cli(env: dict, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


POOL = "bergson-e2e"
GPU_LIMIT = 32  # above the shard count: gates nothing unless a test lowers it


@pytest.fixture(scope="session")
def deployed(client_env, s3, prefect_server):
    """`bergson deploy` against the test server: pool, S3 result storage, gpu limit, deployments.
    The bucket is versioned, so a test can tell whether an object was ever written twice."""
    s3["client"].put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    t0 = time.monotonic()
    r = run_cli(client_env, "deploy", "--pool", POOL, "--results", f"s3://{BUCKET}/prefect-results",
                "--gpu-limit", str(GPU_LIMIT))
    assert r.returncode == 0, r.stdout + r.stderr
    return {"stdout": r.stdout, "seconds": time.monotonic() - t0, "pool": POOL}
