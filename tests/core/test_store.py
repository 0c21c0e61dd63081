"""The gradient store: Arrow IPC shards that round-trip, manifests that vouch for the bytes, and
loud refusals for missing, corrupt or mismatched data."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from bergson_core.errors import StoreError
from bergson_core.index.store import Index, grad_matrix


def rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) * 3


def meta(spec_hash: str = "abc", seed: int = 0) -> dict:
    return {
        "spec": {"projection_seed": seed, "projection_dim": 4},
        "spec_hash": spec_hash,
        "model_fingerprint": "model-1",
        "dataset": {"uri": "corpus.jsonl", "fingerprint": "data-1", "rows": 10},
        "row_width": 6,
        "num_shards": 2,
    }


def test_float32_round_trip_is_exact(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    g = rows(5, 7).astype(np.float32)
    ix.write_shard(3, 40, [f"d{i}" for i in range(5)], [2, 3, 4, 5, 6], g, "float32")
    table = ix.open_shard(3)
    assert table.column("doc_index").to_pylist() == [40, 41, 42, 43, 44]
    assert table.column("doc_id").to_pylist() == ["d0", "d1", "d2", "d3", "d4"]
    assert table.column("num_tokens").to_pylist() == [2, 3, 4, 5, 6]
    back = grad_matrix(table)
    assert back.dtype == np.float32 and back.shape == (5, 7)
    np.testing.assert_array_equal(back, g)


def test_float16_round_trip_is_fp16_rounding(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    g = rows(4, 9)  # float64 in, rounded once to float16
    ix.write_shard(0, 0, list("abcd"), [1] * 4, g, "float16")
    back = grad_matrix(ix.open_shard(0))
    assert back.dtype == np.float16 and back.shape == (4, 9)
    np.testing.assert_array_equal(back, g.astype(np.float16))
    np.testing.assert_allclose(back.astype(np.float64), g, rtol=2**-11, atol=0)  # half an fp16 ulp


def test_manifest_vouches_for_the_file(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    g = rows(6, 5)
    m = ix.write_shard(1, 6, [str(i) for i in range(6)], [3] * 6, g, "float32", extra={"tokens": 18})
    path = ix.shard_path(1)
    data = open(path, "rb").read()
    assert m == ix.manifest(1)
    assert m["rows"] == 6 and m["start"] == 6 and m["stop"] == 12 and m["shard"] == 1
    assert m["bytes"] == len(data) == os.path.getsize(path)
    assert m["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["tokens"] == 18
    assert json.loads(open(ix.manifest_path(1)).read()) == m  # plain JSON on disk
    # deterministic bytes: no timestamps, so rewriting the same rows gives the same file
    again = Index(str(tmp_path / "other")).write_shard(1, 6, [str(i) for i in range(6)], [3] * 6, g, "float32")
    assert again["sha256"] == m["sha256"]


def test_files_are_plain_arrow_ipc(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    g = rows(3, 11).astype(np.float32)
    ix.write_shard(0, 0, ["x", "y", "z"], [1, 2, 3], g, "float32")
    ix.write_shard(1, 3, ["u"], [4], rows(1, 11), "float16")
    with open(ix.shard_path(0), "rb") as f:
        table = ipc.open_file(f).read_all()
    grad_type = table.schema.field("grad").type
    assert isinstance(grad_type, pa.FixedSizeListType)
    assert grad_type.list_size == 11 and grad_type.value_type == pa.float32()
    np.testing.assert_array_equal(np.stack(table.column("grad").to_pylist()), g)
    with pa.memory_map(ix.shard_path(1)) as src:
        assert ipc.open_file(src).schema.field("grad").type.value_type == pa.float16()


def test_shard_without_manifest_does_not_exist(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    for i in range(3):
        ix.write_shard(i, 2 * i, ["a", "b"], [1, 1], rows(2, 4, seed=i), "float32")
    os.remove(ix.manifest_path(1))  # e.g. a worker killed between data file and manifest
    assert os.path.exists(ix.shard_path(1))
    assert [m["shard"] for m in ix.manifests()] == [0, 2]
    assert ix.has_shard(0) and not ix.has_shard(1) and ix.has_shard(2)
    # a stray data file (or a temporary file) never counts either
    with open(os.path.join(os.path.dirname(ix.shard_path(0)), "shard-00007.arrow"), "wb") as f:
        f.write(b"partial")
    assert [m["shard"] for m in ix.manifests()] == [0, 2] and not ix.has_shard(7)


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_corrupt_or_missing_shard_is_refused(tmp_path, damage):
    ix = Index(str(tmp_path / f"ix-{damage}"))
    ix.write_shard(0, 0, ["a", "b", "c"], [1, 1, 1], rows(3, 8), "float32")
    path = ix.shard_path(0)
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        mid = len(data) // 2
        data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
        open(path, "wb").write(bytes(data))
    elif damage == "truncate":
        open(path, "wb").write(bytes(data[:-10]))
    else:
        os.remove(path)
    with pytest.raises(StoreError, match="shard 0"):
        ix.open_shard(0)


def test_ensure_refuses_another_spec_unless_overwrite(tmp_path):
    url = str(tmp_path / "ix")
    ix = Index(url)
    ix.ensure(meta("abc"))
    ix.ensure(meta("abc"))  # same spec: fine, idempotent
    ix.write_shard(0, 0, ["a"], [1], rows(1, 6), "float32")
    with pytest.raises(StoreError, match="projection_seed"):
        Index(url).ensure(meta("def", seed=1))
    assert Index(url).meta()["spec_hash"] == "abc" and Index(url).has_shard(0)  # untouched
    other_data = meta("abc")
    other_data["dataset"] = {**other_data["dataset"], "fingerprint": "data-2"}
    with pytest.raises(StoreError, match="different spec"):
        Index(url).ensure(other_data)
    Index(url).ensure(meta("def", seed=1), overwrite=True)
    assert Index(url).meta()["spec_hash"] == "def"
    assert not Index(url).has_shard(0) and Index(url).manifests() == []  # old shards gone


def test_meta_of_missing_index_is_refused(tmp_path):
    with pytest.raises(StoreError, match="no index"):
        Index(str(tmp_path / "nothing")).meta()


def test_grad_matrix_is_a_view_of_the_arrow_buffer(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    ix.write_shard(0, 0, [str(i) for i in range(7)], [1] * 7, rows(7, 13), "float32")
    table = ix.open_shard(0)
    g = grad_matrix(table)
    assert g.shape == (7, 13)
    values = table.column("grad").chunk(0).values
    assert g.ctypes.data == values.buffers()[1].address + values.offset * 4  # no copy
    assert not g.flags.owndata and not g.flags.writeable


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "bad, dtype, hint",
    [(np.nan, "float32", "non-finite"), (np.inf, "float32", "non-finite"), (1e6, "float16", "float16 overflow")],
)
def test_non_finite_gradients_are_refused(tmp_path, bad, dtype, hint):
    ix = Index(str(tmp_path / "ix"))
    g = rows(3, 4)
    g[1, 2] = bad
    with pytest.raises(StoreError, match=hint):
        ix.write_shard(0, 0, ["a", "b", "c"], [1, 1, 1], g, dtype)
    assert not ix.has_shard(0) and ix.manifests() == []


def test_grad_matrix_of_sliced_and_chunked_tables(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    g = rows(6, 5).astype(np.float32)
    ix.write_shard(0, 0, [str(i) for i in range(6)], [1] * 6, g, "float32")
    table = ix.open_shard(0)
    np.testing.assert_array_equal(grad_matrix(table.slice(2, 3)), g[2:5])
    two_chunks = pa.concat_tables([table.slice(0, 2), table.slice(4, 2)])
    assert two_chunks.column("grad").num_chunks == 2
    np.testing.assert_array_equal(grad_matrix(two_chunks), g[[0, 1, 4, 5]])
    assert grad_matrix(table.slice(0, 0)).shape == (0, 5)
