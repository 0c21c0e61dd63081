"""`bergson query` from the shell: prompts piped on standard input are answered one by one by one
process (no orchestrator for exact answers), and a user mistake is one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

from bergson_core.config import BuildConfig
from bergson_core.index.build import build_shard, prepare_build
from flows.cli import main


def test_stdin_pipe_answers_each_prompt(workspace, tmp_path, capsys):
    cfg = BuildConfig(index=str(tmp_path / "idx"), model=workspace["model"], dataset=workspace["corpus"],
                      id_column="id", shard_size=10, grad_dtype="float32", device="cpu", progress=False)
    for shard, start, stop in prepare_build(cfg).missing():
        build_shard(cfg, shard, start, stop)
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    out = subprocess.run([exe, "query", cfg.index, "--top-k", "2", "--bottom-k", "1", "--output", str(tmp_path / "q")],
                         input="the violin and the candle\n\napple river\n", capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "query 0: the violin and the candle — most helpful" in out.stdout
    assert "query 0: apple river — most harmful" in out.stdout and "answered 2 prompt(s)" in out.stdout
    assert len(os.listdir(tmp_path / "q")) == 2  # one folder per prompt
    capsys.readouterr()  # the build's loading bars
    assert main(["query", cfg.index, "--top-k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bergson query: error: --top-k and --bottom-k are both 0: ask for at least one document"]
