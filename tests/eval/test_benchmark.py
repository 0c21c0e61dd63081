"""The bundled benchmark at its smoke-test size: one row per registered method, real figures."""

from __future__ import annotations

import math
import os

import pyarrow.parquet as pq


def test_quick_benchmark_writes_a_row_per_method(prefect_harness, tmp_path):
    from flows.commands.benchmark import METHODS, run_benchmark

    stem = str(tmp_path / "out" / "results")
    result = run_benchmark(str(tmp_path / "work"), stem, quick=True)
    rows = pq.read_table(stem + ".parquet").to_pylist()
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert -1 <= r["lds"] <= 1 and r["lds_stderr"] > 0
        assert 0 <= r["recall@10"] <= 1 and 0 < r["mrr"] <= 1
        assert r["seconds"] >= 0
    # an ordering a broken method would violate (one run, 2 cores, measured: EK-FAC MRR 0.94 and
    # recall@10 0.71 against random's 0.28 +- 0.11 and 0.25 +- 0.06; MAGIC's LDS 0.80 +- 0.08 against
    # random's 0.03 +- 0.20): margins counted in the rows' own standard errors (over queries)
    by = {r["method"]: r for r in rows}
    rnd, ekfac, magic = by["random scores"], by["EK-FAC influence"], by["MAGIC (exact metagradients)"]
    for metric in ("mrr", "recall@10"):
        se = math.hypot(rnd[f"{metric}_stderr"], ekfac[f"{metric}_stderr"])
        assert ekfac[metric] - rnd[metric] > 2.5 * se, (metric, ekfac, rnd)
    assert magic["lds"] - rnd["lds"] > 2 * math.hypot(magic["lds_stderr"], rnd["lds_stderr"]), (magic, rnd)
    text = open(stem + ".md").read()
    assert all(f"| {name} |" in text for name in METHODS)
    assert "4 retrainings x" in text and result["info"]["retrained_now"] == 5
    assert os.path.getsize(stem + ".png") > 0
    assert os.path.exists(os.path.join(os.path.dirname(stem), "predicted_vs_actual.png"))
    assert not math.isnan(result["info"]["cost"]["seconds_per_retraining"])


def test_smooth_setup_changes_only_the_optimizer_and_writes_its_own_files(prefect_harness, tmp_path):
    import json

    from bergson_core.eval.benchmark import BenchSetup, prepare_workspace
    from flows.commands.benchmark import run_benchmark

    def read(path, mode="r"):
        with open(path, mode) as f:
            return f.read()

    default, smooth = BenchSetup(), BenchSetup.smooth()
    assert smooth.eps > default.eps and smooth.lr < default.lr
    # same corpus and init: the two setups differ only in how the model is trained
    a = prepare_workspace(str(tmp_path / "a"), BenchSetup.quick())
    b = prepare_workspace(str(tmp_path / "b"), BenchSetup.quick().smoothed())
    assert read(a["corpus"]) == read(b["corpus"])
    assert read(os.path.join(a["init"], "model.safetensors"), "rb") == \
        read(os.path.join(b["init"], "model.safetensors"), "rb")
    stem = str(tmp_path / "out" / "results-smooth")
    result = run_benchmark(str(tmp_path / "work"), stem, ["random scores"], quick=True, setup_name="smooth")
    assert json.loads(read(tmp_path / "work" / "bank" / "bank.json"))["recipe"]["eps"] == smooth.eps
    text = read(stem + ".md")
    assert "--setup smooth" in text and f"eps {smooth.eps:g}" in text and "(results-smooth.png)" in text
    assert os.path.exists(tmp_path / "out" / "predicted_vs_actual-smooth.png")
    assert not os.path.exists(tmp_path / "out" / "predicted_vs_actual.png")
    assert [r["method"] for r in result["rows"]] == ["random scores"]


def test_another_subset_fraction_gets_its_own_bank_and_files(prefect_harness, tmp_path):
    import json

    from bergson_core.eval.benchmark import table_tag
    from flows.commands.benchmark import run_benchmark

    assert (table_tag("default"), table_tag("smooth", 0.5), table_tag("smooth", 0.95)) == ("", "-smooth",
                                                                                          "-smooth-keep95")
    stem = str(tmp_path / "out" / "results-keep75")
    run_benchmark(str(tmp_path / "work"), stem, ["random scores"], quick=True, subset_fraction=0.75)
    with open(tmp_path / "work" / "bank" / "bank.json") as f:
        assert json.load(f)["recipe"]["subset_fraction"] == 0.75
    with open(stem + ".md") as f:
        text = f.read()
    assert "--subset-fraction 0.75" in text and "random 75% subsets" in text
    assert "(predicted_vs_actual-keep75.png)" in text
    assert os.path.exists(tmp_path / "out" / "predicted_vs_actual-keep75.png")
    assert not os.path.exists(tmp_path / "out" / "predicted_vs_actual.png")
