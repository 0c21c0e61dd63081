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
    text = open(stem + ".md").read()
    assert all(f"| {name} |" in text for name in METHODS)
    assert "4 retrainings x" in text and result["info"]["retrained_now"] == 5
    assert os.path.getsize(stem + ".png") > 0
    assert os.path.exists(os.path.join(os.path.dirname(stem), "predicted_vs_actual.png"))
    assert not math.isnan(result["info"]["cost"]["seconds_per_retraining"])
