"""User mistakes through the real console script: one line on stderr, non-zero exit, no traceback,
nothing left behind that a later run would trust."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import write_jsonl


def _assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in lines[0], lines[0]


def _no_trusted_output(index):
    """No index.json and no manifest: nothing a later run would take as finished work."""
    if not os.path.exists(index):
        return
    for root, _, files in os.walk(index):
        assert not [f for f in files if f.endswith(".json")], (root, files)


@pytest.fixture
def bad_inputs(workspace, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n')
    return {"empty": str(empty), "broken": str(broken)}


@pytest.mark.parametrize(
    "case, extra, needles",
    [
        ("missing model", ["--model", "/nonexistent/model"], ["does not exist"]),
        ("unknown column", ["--text-column", "body"], ["column 'body'", "columns: id, text"]),
        ("empty corpus", ["--dataset", "{empty}"], ["no rows"]),
        ("malformed jsonl", ["--dataset", "{broken}"], ["line 2"]),
        ("negative p", ["--projection-dim", "-1"], ["--projection-dim", "greater than or equal to 0"]),
        ("unknown choice", ["--loss-reduction", "median"], ["invalid choice"]),
    ],
)
def test_bad_build_input(run_cli, workspace, bad_inputs, tmp_path, case, extra, needles):
    index = tmp_path / "idx"
    args = ["build", index, "--model", workspace["model"], "--dataset", workspace["corpus"]]
    args += [a.format(**bad_inputs) for a in extra]
    proc = run_cli(*args)
    if case == "unknown choice":  # argparse's own usage error: exit 2, usage line + error line
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "invalid choice" in proc.stderr
    else:
        _assert_user_error(proc, *needles)
    _no_trusted_output(index)


def test_index_built_with_another_seed_is_refused(run_cli, workspace, tmp_path):
    index = tmp_path / "idx"
    ok = run_cli("build", index, "--model", workspace["model"], "--dataset", workspace["corpus"],
                 "--shard-size", "8", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    before = {f: open(os.path.join(index, "grads", f), "rb").read() for f in os.listdir(index / "grads")}
    meta = json.loads((index / "index.json").read_text())
    proc = run_cli("build", index, "--model", workspace["model"], "--dataset", workspace["corpus"],
                   "--shard-size", "8", "--projection-seed", "7")
    _assert_user_error(proc, "different spec", "projection_seed", "--overwrite")
    after = {f: open(os.path.join(index, "grads", f), "rb").read() for f in os.listdir(index / "grads")}
    assert after == before and json.loads((index / "index.json").read_text()) == meta


def test_score_missing_index_and_bad_yaml(run_cli, workspace, tmp_path):
    proc = run_cli("score", tmp_path / "nothing", "--queries", workspace["queries"])
    _assert_user_error(proc, "no index at")
    bad = tmp_path / "cfg.yaml"
    bad.write_text("projection_dim: [1, 2\n")
    proc = run_cli("build", tmp_path / "idx", "--config", bad)
    _assert_user_error(proc, "not valid YAML")
    unknown = tmp_path / "cfg2.yaml"
    unknown.write_text("model: x\nprojection_dimm: 3\n")
    proc = run_cli("build", tmp_path / "idx", "--config", unknown)
    _assert_user_error(proc, "unknown option 'projection_dimm'")


def test_yaml_config_supplies_options(run_cli, workspace, tmp_path):
    cfg = tmp_path / "build.yaml"
    write_jsonl  # noqa: B018 (keeps the helper import used in this module)
    cfg.write_text(f"model: {workspace['model']}\ndataset: {workspace['corpus']}\nprojection_dim: 4\n"
                   "shard_size: 12\nprogress: false\n")
    proc = run_cli("build", tmp_path / "idx", "--config", cfg, "--projection-dim", "6")  # flag beats file
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["spec"]["projection_dim"] == 6 and meta["num_shards"] == 2
