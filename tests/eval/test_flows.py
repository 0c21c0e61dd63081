"""The validate and recall flows under a temporary Prefect API: a failed run resumes without
retraining finished subsets, and score files are evaluated against the stored bank."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bergson_core.eval.retrain as retrain_mod
from bergson_core.eval.bank import Bank


def test_validate_flow_resumes_and_reports(prefect_harness, bank_options, tmp_path, monkeypatch):
    from bergson_core.config.eval import RecallConfig
    from flows.recall import recall
    from flows.validate import validate

    rng = np.random.default_rng(0)
    q, d = np.meshgrid(np.arange(8), np.arange(24), indexing="ij")
    scores = tmp_path / "random" / "topk.parquet"
    scores.parent.mkdir()
    pq.write_table(pa.table({"query_index": q.ravel(), "doc_index": d.ravel(),
                             "score": rng.normal(size=q.size), "rank": d.ravel(),
                             "doc_id": [f"x{i}" for i in d.ravel()]}), scores)
    cfg = bank_options(scores=[str(scores.parent)])

    calls = []
    real = retrain_mod.train

    def crash_on_third(model, docs, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return real(model, docs, *a, **kw)

    monkeypatch.setattr(retrain_mod, "train", crash_on_third)
    with pytest.raises(Exception, match="worker killed"):
        validate(cfg)
    bank = Bank(cfg.bank)
    runs = ["full"] + [f"subset-{i:05d}" for i in range(4)]
    missing = bank.missing(runs)
    assert "full" not in missing and 0 < len(missing) < len(runs)

    calls.clear()
    monkeypatch.setattr(retrain_mod, "train", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    result = validate(cfg)
    assert len(calls) == len(missing) == result["retrained_now"]  # finished subsets were not retrained
    assert result["cost"]["retrainings"] == 4 and result["cost"]["seconds_per_retraining"] > 0
    (method,) = result["methods"]
    assert method["method"] == "random" and method["queries"] == 8 and np.isfinite(method["lds"])

    calls.clear()
    again = validate(cfg)  # a finished bank: no retraining, the same numbers
    assert calls == [] and again["retrained_now"] == 0
    assert again["methods"][0]["lds"] == method["lds"]

    assert {"progress", "markdown", "table"} <= _artifact_types("validate-" + result["recipe_hash"])

    out = recall(RecallConfig(queries=bank_options().queries, scores=[str(scores)], ks=[1, 10],
                              output=str(tmp_path / "recall")))
    (row,) = out["methods"]
    assert row["recall@10"] == 0.0  # these ids name no corpus document
    assert {"markdown", "table"} <= _artifact_types("recall-queries-jsonl-random")


def _artifact_types(prefix: str) -> set[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
            return {a.type for a in arts}

    return asyncio.run(read())
