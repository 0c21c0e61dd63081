"""The query-gradient cache key names everything that decides the gradients: another dtype, model
or GGUF file must not reuse cached query gradients."""

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.scoring.queries import query_cache_key


def test_key_includes_dtype_model_and_gguf(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "a query"}\n{"text": "another"}\n')
    build = BuildConfig(index=str(tmp_path / "idx"), model="org/model", dataset=str(queries), gguf_file=None)
    meta = {"spec": build.spec(), "spec_hash": build.spec_hash(), "model_fingerprint": "f"}

    def key(**kw):
        return query_cache_key(meta, ScoreConfig(index=build.index, queries=str(queries), device="cpu", **kw))

    base = key()
    assert base == key()  # deterministic
    assert base["dtype"] == "torch.float32" and key(dtype="float64")["dtype"] == "torch.float64"
    assert key(dtype="float64") != base
    assert key(model="org/other") != base
    gguf = BuildConfig(**{**build.model_dump(), "gguf_file": "m.gguf"})
    meta_gguf = {"spec": gguf.spec(), "spec_hash": gguf.spec_hash(), "model_fingerprint": "f"}
    assert query_cache_key(meta_gguf, ScoreConfig(index=build.index, queries=str(queries), device="cpu")) != base
    assert {"revision", "gguf_file", "dtype", "model", "queries_fingerprint"} <= set(base)
