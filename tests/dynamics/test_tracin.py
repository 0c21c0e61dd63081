"""Multi-checkpoint TracIn from stored per-checkpoint indexes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config import BuildConfig
from bergson_core.config.dynamics import TracInConfig
from bergson_core.eval.scores import dense_scores
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.methods.tracin.run import run_tracin
from bergson_core.train.trainer import learning_rate, total_steps

from . import helpers


def build_index(run, checkpoint: str, path) -> str:
    cfg = BuildConfig(index=str(path), model=os.path.join(checkpoint, "model"), dataset=run["corpus"],
                      dtype="float64", device="cpu", projection_dim=0, grad_dtype="float32",
                      loss_reduction="sum", shard_size=3, progress=False)
    plan = prepare_build(cfg)
    for shard, start, stop in plan.missing():
        build_shard(cfg, shard, start, stop)
    return str(path)


@pytest.fixture(scope="module")
def indexes(trained_run):
    root = trained_run["root"]
    return {step: build_index(trained_run, str(trained_run["run"] / f"checkpoint-{step}"), root / f"index-{step}")
            for step in (2, 4)}


def reference(trained_run, step: int) -> np.ndarray:
    """<g_q, g_d> [Q, N] at a checkpoint, from autograd gradients of the checkpoint's model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(trained_run["run"] / f"checkpoint-{step}" / "model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    q = helpers.autograd_gradients(model, tok, trained_run["query_texts"])
    d = helpers.autograd_gradients(model, tok, trained_run["texts"])
    return (q @ d.T).numpy()


def test_one_checkpoint_unit_lr_is_the_gradient_inner_product(trained_run, indexes, tmp_path):
    cfg = TracInConfig(indexes=[indexes[4]], queries=trained_run["queries"], learning_rates=[1.0],
                       output=str(tmp_path / "out"), device="cpu", block_rows=2)
    summary = run_tracin(cfg)
    got = dense_scores(summary["output"], 2, 8)
    want = reference(trained_run, 4)
    assert np.abs(want).max() > 1e-3  # a real signal, not zeros
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("mode", ["checkpoint", "interval"])
def test_two_checkpoints_are_the_lr_weighted_sum(trained_run, indexes, tmp_path, mode):
    opts = trained_run["opts"]
    total = total_steps(8, opts)
    lr = [learning_rate(s, total, opts) for s in range(total)]  # the schedule, independently of the run
    etas = [lr[1], lr[3]] if mode == "checkpoint" else [lr[0] + lr[1], lr[2] + lr[3]]
    assert etas[0] != etas[1]
    cfg = TracInConfig(indexes=[indexes[2], indexes[4]], queries=trained_run["queries"], lr_weight=mode,
                       output=str(tmp_path / "out"), device="cpu")
    summary = run_tracin(cfg)
    np.testing.assert_allclose(summary["learning_rates"], etas, rtol=1e-12)
    got = dense_scores(summary["output"], 2, 8)
    want = etas[0] * reference(trained_run, 2) + etas[1] * reference(trained_run, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_indexes_of_different_corpora_are_refused(trained_run, indexes, tmp_path):
    from bergson_core.errors import StoreError
    from tests.core.helpers import write_jsonl

    other = dict(trained_run, corpus=write_jsonl(tmp_path / "other.jsonl", [{"text": "a b c"}] * 8))
    odd = build_index(other, str(trained_run["run"] / "checkpoint-2"), tmp_path / "odd")
    with pytest.raises(StoreError, match="same corpus"):
        run_tracin(TracInConfig(indexes=[indexes[4], odd], queries=trained_run["queries"], learning_rates=[1, 1],
                                output=str(tmp_path / "out"), device="cpu"))


def test_cli_flow_writes_a_score_file_equal_to_the_library(trained_run, indexes, tmp_path, prefect_api):
    """`bergson tracin` (the Prefect flow, in a subprocess against the session's API) writes the same
    scores as the plain function, and a rerun reuses the stored query gradients."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = ["tracin", "--indexes", indexes[2], indexes[4], "--queries", trained_run["queries"],
            "--output", str(out), "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    done = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lib = run_tracin(TracInConfig(indexes=[indexes[2], indexes[4]], queries=trained_run["queries"],
                                  output=str(tmp_path / "lib"), device="cpu"))
    np.testing.assert_allclose(dense_scores(str(out / "topk.parquet"), 2, 8), dense_scores(lib["output"], 2, 8),
                               rtol=1e-6)
    arrow = out / "queries" / "checkpoint-1.arrow"
    mtime = arrow.stat().st_mtime_ns
    again = subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert arrow.stat().st_mtime_ns == mtime


def test_reordered_corpus_gives_no_wrong_texts(trained_run, tmp_path):
    """Texts come only from the corpus that was indexed: after the corpus file is reordered, tracin
    leaves texts empty, keeps the ids stored in the index, and says why (terminal and file)."""
    import json
    import time

    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(trained_run["corpus"])]
    corpus = str(tmp_path / "c.jsonl")
    with open(corpus, "w") as f:
        f.writelines(json.dumps(dict(r, id=f"doc-{i}")) + "\n" for i, r in enumerate(rows))
    ckpt = str(trained_run["run"] / "checkpoint-4")
    index = build_index(dict(trained_run, corpus=corpus), ckpt, tmp_path / "idx")

    def run(out: str) -> tuple[dict, list[dict]]:
        cfg = TracInConfig(indexes=[index], queries=trained_run["queries"], learning_rates=[1.0],
                           output=str(tmp_path / out), device="cpu")
        summary = run_tracin(cfg)
        return summary, pq.read_table(summary["output"]).to_pylist()

    before, rows_before = run("a")
    assert before["warnings"] == [] and all(r["text"] for r in rows_before)
    time.sleep(0.01)
    with open(corpus, "w") as f:
        f.writelines(json.dumps(dict(r, id=f"doc-{i}")) + "\n" for i, r in reversed(list(enumerate(rows))))
    after, rows_after = run("b")
    assert any("changed since the index was built" in w for w in after["warnings"])
    assert all(r["text"] is None for r in rows_after)
    assert [r["doc_id"] for r in rows_after] == [r["doc_id"] for r in rows_before]
    assert b"changed since" in pq.read_schema(after["output"]).metadata[b"bergson.warnings"]
