"""`bergson magic` end to end: the flow through the CLI equals the library, a rerun reuses its
parts, and `bergson validate` measures its LDS against retraining on the same recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bergson_core.config.dynamics import MagicConfig
from bergson_core.eval.scores import dense_scores
from bergson_core.methods.magic.metagrad import metagradients
from bergson_core.methods.magic.run import load_recipe, run_magic

RECIPE = {"id_column": "id", "query_prompt_column": "prompt", "query_completion_column": "completion",
          "max_length": 32, "optimizer": "adamw", "lr": 3e-3, "epochs": 2, "batch_size": 4, "train_loss": "mean",
          "device": "cpu"}


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    from bergson_core.eval.facts import make_facts
    from bergson_core.model.tiny import save_tiny
    from tests.core.helpers import write_jsonl

    root = tmp_path_factory.mktemp("magic-facts")
    docs, queries = make_facts(num_people=4, attributes=("city", "job"), seed=0)
    texts = [d["text"] for d in docs] + [q["prompt"] + " " + q["completion"] for q in queries]
    return {"root": root, "dataset": write_jsonl(root / "corpus.jsonl", docs),
            "queries": write_jsonl(root / "queries.jsonl", queries), "documents": len(docs), "nq": len(queries),
            "model": save_tiny(str(root / "init"), "gpt2", texts, seed=0, hidden=16, layers=1, heads=2)}


def config(facts, **kw) -> MagicConfig:
    return MagicConfig(model=facts["model"], dataset=facts["dataset"], queries=facts["queries"], **RECIPE, **kw)


def test_score_file_is_minus_the_metagradient(facts, tmp_path):
    cfg = config(facts, output=str(tmp_path / "lib"), queries_per_task=3, checkpointing="log")
    summary = run_magic(cfg)
    assert len(summary["parts"]) == 3  # 8 queries in chunks of 3
    model, docs, qdocs, pad = load_recipe(cfg)
    direct, _ = metagradients(model, docs, qdocs, cfg, schedule="every", pad_id=pad)
    got = dense_scores(summary["output"], facts["nq"], facts["documents"])  # what validate reads
    np.testing.assert_allclose(got, -direct.numpy(), rtol=1e-5, atol=1e-7)


def test_cli_flow_resumes_and_validates(facts, tmp_path, prefect_api):
    from bergson_core.config.eval import ValidateConfig
    from flows.commands import launch

    out = tmp_path / "cli"
    args = ["magic", "--model", facts["model"], "--dataset", facts["dataset"], "--queries", facts["queries"],
            "--output", str(out), "--checkpointing", "sqrt", "--queries-per-task", "4"]
    for k, v in RECIPE.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    first = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((out / "magic.json").read_text())
    assert [p["reused"] for p in summary["parts"]] == [True, True]
    lib = run_magic(config(facts, output=str(tmp_path / "lib"), checkpointing="sqrt", queries_per_task=4))
    want = dense_scores(lib["output"], facts["nq"], facts["documents"])
    np.testing.assert_allclose(dense_scores(str(out / "topk.parquet"), facts["nq"], facts["documents"]), want,
                               rtol=1e-5, atol=1e-6 * np.abs(want).max())
    torch.set_num_threads(1)
    keep = {k: v for k, v in RECIPE.items() if k != "device"}
    report = launch("validate", ValidateConfig(
        bank=str(tmp_path / "bank"), model=facts["model"], dataset=facts["dataset"], queries=facts["queries"],
        num_subsets=8, scores=[str(out / "topk.parquet")], names=["magic"], **keep))
    lds = report["methods"][0]["lds"]
    assert lds > 0.5, report["methods"]  # exact first-order effects of the weights track retraining


def test_checkpointing_changes_the_work_not_the_scores_and_the_schedule_changes_the_scores(facts, tmp_path):
    """--checkpointing trades memory for recomputation (same metagradients, other forward/backward
    step counts and fewer states held); --schedule is the recipe's learning-rate schedule, so it changes
    the training being differentiated and therefore the scores."""
    runs = {}
    for name, kw in {"every": {"checkpointing": "every"}, "log": {"checkpointing": "log"},
                     "constant": {"checkpointing": "every", "schedule": "constant"}}.items():
        summary = run_magic(config(facts, output=str(tmp_path / name), **kw))
        runs[name] = (summary, dense_scores(summary["output"], facts["nq"], facts["documents"]))
    (every, s_every), (log, s_log), (_, s_const) = runs["every"], runs["log"], runs["constant"]
    assert every["checkpointing"] == "every" and log["checkpointing"] == "log" and every["steps"] == log["steps"]
    assert log["forward_steps"] > every["forward_steps"] and log["peak_states"] < every["peak_states"]
    np.testing.assert_allclose(s_log, s_every, rtol=1e-6, atol=1e-9 * np.abs(s_every).max())
    assert np.abs(s_const - s_every).max() > 1e-2 * np.abs(s_every).max()
