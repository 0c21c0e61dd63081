"""A build killed with SIGKILL resumes to the same bytes; the whole path on a real S3 server."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.model.tiny import save_tiny
from flows.build import build_index
from flows.score import score

from .conftest import write_jsonl


def _tree(folder) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def slow_workspace(tmp_path_factory):
    """Enough work per shard (full gradients, longer documents) that a kill lands mid-build."""
    root = tmp_path_factory.mktemp("resume")
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(words[(i * 7 + j) % 60] for j in range(40 + i % 20)) for i in range(48)]
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in texts])
    model = save_tiny(str(root / "model"), "gpt2", texts, hidden=64, layers=2)
    return {"root": root, "corpus": corpus, "model": model}


def test_sigkilled_build_resumes_byte_identical(run_cli, prefect_api, slow_workspace, tmp_path):
    ws = slow_workspace
    common = ["--model", ws["model"], "--dataset", ws["corpus"], "--shard-size", "2", "--projection-dim", "0",
              "--grad-dtype", "float32", "--no-progress"]
    reference = tmp_path / "reference"
    assert run_cli("build", reference, *common).returncode == 0

    index = tmp_path / "killed"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    proc = subprocess.Popen([exe, "build", str(index), *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the kill is driven by the build's own event (a third shard manifest appearing), not by a clock;
    # the 900 s bound only guards against a hung build on an overloaded machine
    deadline = time.time() + 900
    while len(glob.glob(str(index / "grads" / "*.json"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(glob.glob(str(index / "grads" / "*.json")))
    assert 3 <= len(done) < 24, f"the kill should land mid-build ({len(done)} of 24 shards done)"
    stamps = {p: os.stat(p).st_mtime_ns for p in done}

    rerun = run_cli("build", index, *common)
    assert rerun.returncode == 0, rerun.stderr
    # finished shards were not recomputed: their manifests were never rewritten
    assert {p: os.stat(p).st_mtime_ns for p in done} == stamps
    assert _tree(index) == _tree(reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                          "region_name": "us-east-1"}}
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="bergson-test")
    fs = s3fs.S3FileSystem(**options)
    yield {"endpoint": endpoint, "options": options, "fs": fs}
    server.stop()


def test_build_and_score_on_s3(prefect_api, workspace, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BERGSON_CACHE", str(tmp_path / "cache"))
    fs, opts = s3_server["fs"], s3_server["options"]
    fs.put(workspace["corpus"], "bergson-test/data/corpus.jsonl")
    common = dict(model=workspace["model"], id_column="id", shard_size=7, grad_dtype="float32", progress=False)
    remote = BuildConfig(index="s3://bergson-test/idx", dataset="s3://bergson-test/data/corpus.jsonl",
                         storage_options=opts, **common)
    local = BuildConfig(index=str(tmp_path / "local"), dataset=workspace["corpus"], **common)
    assert build_index(remote)["shards_computed"] == 4
    build_index(local)
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls("bergson-test/idx/grads"))
    assert names == sorted(os.listdir(tmp_path / "local" / "grads"))
    for n in names:  # same bytes on S3 as locally; manifests differ only in the spec hash (the dataset URI)
        remote_bytes = fs.cat(f"bergson-test/idx/grads/{n}")
        local_bytes = open(tmp_path / "local" / "grads" / n, "rb").read()
        if n.endswith(".arrow"):
            assert remote_bytes == local_bytes
        else:
            r, loc = json.loads(remote_bytes), json.loads(local_bytes)
            assert (r.pop("spec_hash"), loc.pop("spec_hash")) == (remote.spec_hash(), local.spec_hash())
            assert r == loc
    assert build_index(remote)["shards_skipped"] == 4  # rerun against the bucket does nothing

    score(ScoreConfig(index=remote.index, queries=workspace["queries"], top_k=3, storage_options=opts))
    score(ScoreConfig(index=local.index, queries=workspace["queries"], top_k=3))
    with fs.open("bergson-test/idx/scores/queries/topk.parquet", "rb") as f:
        remote_top = pq.read_table(f).to_pandas()
    local_top = pq.read_table(tmp_path / "local" / "scores" / "queries" / "topk.parquet").to_pandas()
    assert list(remote_top.doc_index) == list(local_top.doc_index)
    np.testing.assert_allclose(remote_top.score, local_top.score, rtol=1e-6)
    # remote shards were read through the local cache, verified by checksum
    assert len(glob.glob(str(tmp_path / "cache" / "shards" / "*.arrow"))) == 4
