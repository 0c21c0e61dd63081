"""The bank of retrained query losses: determinism, resumption, reuse across score files."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bergson_core.eval.retrain as retrain_mod
import bergson_core.fs as fsu
from bergson_core.errors import InputError, StoreError
from bergson_core.eval.bank import FULL_RUN, subset_run
from bergson_core.eval.evaluate import lds_of_file, lds_report, recall_of_file
from bergson_core.eval.retrain import full_model_path, prepare_bank, retrain
from bergson_core.train.trainer import STATE_FILE


def _count_trainings(monkeypatch) -> list[int]:
    calls = []
    real = retrain_mod.train

    def counting(model, docs, *a, **kw):
        calls.append(len(docs))
        return real(model, docs, *a, **kw)

    monkeypatch.setattr(retrain_mod, "train", counting)
    return calls


def test_retraining_the_same_subset_gives_identical_losses(bank_options):
    cfg = bank_options()
    plan = prepare_bank(cfg)
    first = retrain(cfg, subset_run(1))
    losses_a, _ = plan.bank.read_run(subset_run(1))
    plan.bank.delete_run(subset_run(1))
    again = retrain(cfg, subset_run(1))
    losses_b, _ = plan.bank.read_run(subset_run(1))
    assert not first["skipped"] and not again["skipped"]
    assert losses_a.shape == (8,) and np.isfinite(losses_a).all()
    assert np.array_equal(losses_a, losses_b)  # bit for bit
    retrain(cfg, subset_run(2))
    assert not np.array_equal(losses_a, plan.bank.read_run(subset_run(2))[0])  # another subset, other losses


def test_a_killed_run_resumes_without_retraining_finished_subsets(bank_options, monkeypatch):
    cfg = bank_options()
    plan = prepare_bank(cfg)
    for run in (FULL_RUN, subset_run(0), subset_run(1)):
        retrain(cfg, run)
    finished = {r: plan.bank.read_run(r)[1] for r in (FULL_RUN, subset_run(0), subset_run(1))}
    # killed while storing subset 2: its losses file is written but its manifest (written last) is not
    original = fsu.write_json

    def die_on_manifest(fs, path, obj):
        if path.endswith(f"{subset_run(2)}.json"):
            raise KeyboardInterrupt("killed")
        return original(fs, path, obj)

    monkeypatch.setattr(fsu, "write_json", die_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        retrain(cfg, subset_run(2))
    monkeypatch.setattr(fsu, "write_json", original)
    assert os.path.exists(os.path.join(cfg.bank, "runs", f"{subset_run(2)}.safetensors"))

    calls = _count_trainings(monkeypatch)
    plan = prepare_bank(cfg)  # the rerun: same recipe, the bank is kept
    assert plan.missing() == [subset_run(2), subset_run(3)]
    results = {run: retrain(cfg, run) for run in plan.runs}
    assert len(calls) == 2  # only the two unfinished subsets were trained
    assert [r for r, res in results.items() if not res["skipped"]] == [subset_run(2), subset_run(3)]
    for run, manifest in finished.items():
        assert plan.bank.read_run(run)[1] == manifest  # untouched
    full, losses, manifests = plan.bank.losses()
    assert losses.shape == (4, 8) and full.shape == (8,) and len(manifests) == 4


def test_bank_refuses_another_recipe_and_keeps_the_full_model(bank_options):
    cfg = bank_options()
    prepare_bank(cfg)
    result = retrain(cfg, FULL_RUN)
    assert result["kept"] == result["documents"] == 24
    model_dir = full_model_path(cfg)
    assert os.path.exists(os.path.join(model_dir, "model.safetensors"))
    assert os.path.exists(os.path.join(os.path.dirname(model_dir), STATE_FILE))
    assert len(result["lr_history"]) == result["steps"] == 12
    with pytest.raises(StoreError, match="another recipe"):
        prepare_bank(bank_options(lr=1e-2))
    plan = prepare_bank(bank_options(lr=1e-2, overwrite=True))
    assert plan.missing() == plan.runs


def test_drop_mode_trains_on_the_kept_documents_only(bank_options, monkeypatch):
    cfg = bank_options(subset_mode="drop", subset_fraction=0.25)
    prepare_bank(cfg)
    calls = _count_trainings(monkeypatch)
    retrain(cfg, subset_run(0))
    retrain(cfg, FULL_RUN)
    assert calls == [6, 24]


def _write_scores(path, scores: np.ndarray, drop_last: bool = False) -> str:
    q, d = np.meshgrid(np.arange(scores.shape[0]), np.arange(scores.shape[1]), indexing="ij")
    rows = {"query_index": q.ravel(), "doc_index": d.ravel(), "score": scores.ravel()}
    if drop_last:
        rows = {k: v[:-1] for k, v in rows.items()}
    pq.write_table(pa.table(rows), path)
    return str(path)


def test_score_files_reuse_the_bank_and_get_reports(bank_options, tmp_path, monkeypatch):
    cfg = bank_options()
    plan = prepare_bank(cfg)
    for run in plan.runs:
        retrain(cfg, run)
    calls = _count_trainings(monkeypatch)
    full, losses, _ = plan.bank.losses()
    masks = plan.bank.masks()
    # an "oracle" built from the measured losses themselves: least squares of -loss on the masks
    oracle = np.linalg.lstsq(np.c_[masks.astype(float), np.ones(4)], -losses, rcond=None)[0][:-1].T  # [Q, N]
    rng = np.random.default_rng(0)
    files = {"oracle": _write_scores(tmp_path / "oracle.parquet", oracle),
             "noise": _write_scores(tmp_path / "noise.parquet", rng.normal(size=(8, 24)))}
    results = [lds_of_file(cfg.bank, url, name) for name, url in files.items()]
    assert calls == []  # evaluating score files never retrains
    assert results[0]["lds"] == pytest.approx(1.0)
    assert results[0]["subsets"] == 4 and results[0]["queries"] == 8
    report = lds_report(cfg.bank, results, str(tmp_path / "report"))
    for key in ("summary", "per_query", "bank_losses", "scatter_plot", "lds_plot"):
        assert os.path.exists(report["paths"][key])
    with open(report["paths"]["lds_plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = pq.read_table(report["paths"]["bank_losses"]).to_pydict()
    assert np.allclose(np.array(table["loss"]).reshape(4, 8), losses)
    with pytest.raises(InputError, match="--top-k 24"):
        lds_of_file(cfg.bank, _write_scores(tmp_path / "partial.parquet", oracle, drop_last=True), "partial")


def test_recall_of_score_files_on_facts(facts_setup, tmp_path):
    """Oracle rankings of the facts' supporting documents have recall 1; reversed ones 0."""
    docs, queries = facts_setup["docs"], facts_setup["query_rows"]
    ids = [d["id"] for d in docs]
    rows = {"query_index": [], "rank": [], "doc_index": [], "score": [], "doc_id": []}
    for qi, q in enumerate(queries):
        support = set(q["support_ids"])
        order = [i for i, d in enumerate(ids) if d in support] + [i for i, d in enumerate(ids) if d not in support]
        for rank, di in enumerate(order):
            for k, v in zip(rows, (qi, rank, di, float(-rank), ids[di])):
                rows[k].append(v)
    oracle = tmp_path / "oracle.parquet"
    pq.write_table(pa.table(rows), oracle)
    rows["rank"] = [len(ids) - 1 - r for r in rows["rank"]]
    reverse = tmp_path / "reverse.parquet"
    pq.write_table(pa.table(rows), reverse)
    good = recall_of_file(str(oracle), "oracle", facts_setup["queries"], "support_ids", [1, 3, 10])
    bad = recall_of_file(str(reverse), "reverse", facts_setup["queries"], "support_ids", [1, 3, 10])
    assert good["mrr"] == good["recall@1"] == good["recall@3"] == good["recall@10"] == 1.0
    assert bad["recall@1"] == bad["recall@3"] == bad["recall@10"] == 0.0
    assert good["queries"] == len(queries) == 8
