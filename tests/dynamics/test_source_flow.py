"""`bergson source` end to end through the CLI and its Prefect flow: equal to the library, a rerun
rewrites nothing, and user mistakes end in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from bergson_core.eval.scores import dense_scores
from bergson_core.methods.source.run import run_source

from .test_source import QUERIES, TEXTS, config, run  # noqa: F401  (the trained run fixture)


def bergson(args: list[str], prefect_api: str, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_extra)
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    return subprocess.run([exe, "source", *args], check=False, capture_output=True, text=True, timeout=300, env=env)


def cli_args(run, out) -> list[str]:  # noqa: F811
    return ["--checkpoints", *run["checkpoints"], "--segments", "2", "--dataset", run["corpus"], "--queries",
            run["queries"], "--output", str(out), "--dtype", "float64", "--device", "cpu", "--loss-reduction", "sum",
            "--shard-size", "4", "--no-progress"]


def test_cli_flow_equals_the_library_and_a_rerun_skips_finished_work(run, tmp_path, prefect_api):  # noqa: F811
    out = tmp_path / "cli"
    first = bergson(cli_args(run, out), prefect_api)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "SOURCE (adam variant) over 3 checkpoint(s) in 2 segment(s)" in first.stdout
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".arrow", ".safetensors")}
    again = bergson(cli_args(run, out), prefect_api)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed or rewritten
    summary = json.loads((out / "source.json").read_text())
    assert summary["segments"] == [[0, 1], [2]]
    lib = run_source(config(run, tmp_path / "lib", segments=2))
    want = dense_scores(lib["output"], len(QUERIES), len(TEXTS))
    np.testing.assert_array_equal(dense_scores(str(out / "topk.parquet"), len(QUERIES), len(TEXTS)), want)


def test_user_mistakes_end_in_one_line(run, tmp_path, prefect_api):  # noqa: F811
    out = tmp_path / "bad"
    args = cli_args(run, out)
    args[1:4] = [run["checkpoints"][0], run["checkpoints"][1], run["checkpoints"][1]]
    res = bergson(args, prefect_api)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "both at step 4" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists()
