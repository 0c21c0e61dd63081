"""User mistakes through the real console script: one line on stderr, exit 2, no traceback,
nothing left behind that a later run would trust."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from flows.cli import main, parser

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
        ("unknown choice", ["--loss-reduction", "median"], ["--loss-reduction", "invalid choice", "'median'"]),
    ],
)
def test_bad_build_input(run_cli, workspace, bad_inputs, tmp_path, case, extra, needles):
    index = tmp_path / "idx"
    args = ["build", index, "--model", workspace["model"], "--dataset", workspace["corpus"]]
    args += [a.format(**bad_inputs) for a in extra]
    proc = run_cli(*args)
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


def _argparse_mistakes():
    """For every subcommand: an unknown flag, each int/float flag given a word, each choice flag given
    a value outside its choices, and the subcommand without its positional argument."""
    top, _ = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    yield "no command", [], "required: COMMAND"
    yield "unknown command", ["nosuch"], "invalid choice: 'nosuch'"
    for name, sp in sub.choices.items():
        positional = [a for a in sp._actions if not a.option_strings and a.nargs is None]
        base = [name] + ["x"] * len(positional)
        yield f"{name} unknown flag", [*base, "--no-such-flag"], "unrecognized arguments: --no-such-flag"
        if positional:
            yield f"{name} no positional", [name], "required"
        for a in sp._actions:
            flag = a.option_strings[-1] if a.option_strings else None
            if flag and a.type in (int, float):
                yield f"{name} {flag} word", [*base, flag, "lots"], f"argument {flag}: invalid"
            elif flag and a.choices:
                yield f"{name} {flag} choice", [*base, flag, "nosuch"], f"argument {flag}: invalid choice"


_MISTAKES = list(_argparse_mistakes())


@pytest.mark.parametrize("argv, needle", [m[1:] for m in _MISTAKES], ids=[m[0] for m in _MISTAKES])
def test_every_argparse_mistake_is_one_line(capsys, argv, needle):
    """argparse's own errors (usage block + message by default) are one line and exit 2 too."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and not out, err
    assert lines[0].startswith("bergson") and needle in lines[0] and "--help" in lines[0], lines[0]
