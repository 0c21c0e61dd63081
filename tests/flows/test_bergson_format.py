"""`bergson export --format bergson` / `bergson import`: the export is Bergson's layout (a raw
row-major gradients.bin that numpy reads back to the very rows, info.json's sizes in module order,
data.hf), an export imported back gives byte-identical shards (float32 and float16), a folder Bergson
wrote imports with its rows and is marked so no query gradient of ours is scored against it, and
mistakes are refused before anything is written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bergson_core.config import BuildConfig
from bergson_core.config.interop import ExportConfig, ImportConfig
from bergson_core.errors import InputError, StoreError
from bergson_core.index.bergson_format import check_not_foreign, export_bergson, import_bergson
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.store import Index, grad_matrix


def _build(ws, index, dtype) -> Index:
    cfg = BuildConfig(index=str(index), model=ws["model"], dataset=ws["corpus"], id_column="id", shard_size=7,
                      projection_dim=4, grad_dtype=dtype, batch_tokens=256, progress=False)
    for shard, start, stop in prepare_build(cfg).shards:
        build_shard(cfg, shard, start, stop)
    return Index(str(index))


def _rows(index: Index) -> np.ndarray:
    return np.concatenate([grad_matrix(t) for _, t in index.iter_shards()])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_is_bergsons_layout_and_imports_back_byte_identical(workspace, tmp_path, dtype):
    ours = _build(workspace, tmp_path / "ours", dtype)
    meta = ours.meta()
    out = tmp_path / "bergson"
    result = export_bergson(ExportConfig(index=ours.url, output=str(out)))
    info = json.load(open(out / "info.json"))
    assert info["num_grads"] == info["num_items"] == 24 and info["base_dtype"] == dtype
    assert not info["attribute_tokens"]
    # Bergson's names are relative to the base model; sizes in the index's column order
    assert list(info["grad_sizes"]) == [m["name"].removeprefix("transformer.") for m in meta["modules"]]
    assert list(info["grad_sizes"].values()) == [m["width"] for m in meta["modules"]]
    raw = np.fromfile(out / "gradients.bin", dtype=dtype).reshape(24, meta["row_width"])
    assert np.array_equal(raw, _rows(ours)) and result["bytes"] == raw.nbytes
    import datasets

    data = datasets.load_from_disk(str(out / "data.hf"))
    assert data["doc_id"] == [f"doc-{i}" for i in range(24)] and all(n > 0 for n in data["length"])

    back = tmp_path / "back"
    import_bergson(ImportConfig(source=str(out), index=str(back)))
    for name in sorted(os.listdir(ours.path + "/grads")):
        if name.endswith(".arrow"):
            assert (back / "grads" / name).read_bytes() == open(f"{ours.path}/grads/{name}", "rb").read(), name
    assert Index(str(back)).meta() == meta

    with pytest.raises(InputError, match="exists"):
        export_bergson(ExportConfig(index=ours.url, output=str(out)))
    with pytest.raises(StoreError, match="exists"):
        import_bergson(ImportConfig(source=str(out), index=str(back)))


def test_a_folder_bergson_wrote_imports_and_is_marked(workspace, tmp_path):
    import datasets
    import yaml

    src = tmp_path / "bergson-built"
    src.mkdir()
    rows = np.random.default_rng(0).normal(size=(11, 8)).astype(np.float32)
    rows.tofile(src / "gradients.bin")
    json.dump({"attribute_tokens": False, "num_items": 11, "num_grads": 11, "base_dtype": "float32",
               "grad_sizes": {"h.0.attn.c_attn": 4, "h.0.mlp.c_fc": 4}}, open(src / "info.json", "w"))
    datasets.Dataset.from_dict({"length": list(range(3, 14)), "loss": [0.0] * 11}).save_to_disk(str(src / "data.hf"))
    yaml.safe_dump({"steps": [{"build": {"index_cfg": {"model": workspace["model"], "projection_dim": 2,
                                                       "data": {"dataset": "corpus_hf"}}}}]},
                   open(src / "config.yaml", "w"))
    got = import_bergson(ImportConfig(source=str(src), index=str(tmp_path / "imp"), shard_size=4))
    index = Index(str(tmp_path / "imp"))
    meta = index.meta()
    assert got["shards"] == 3 and np.array_equal(_rows(index), rows)
    assert [m["name"] for m in meta["modules"]] == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
    table = index.open_shard(1)
    assert table.column("doc_id").to_pylist() == ["4", "5", "6", "7"]
    assert table.column("num_tokens").to_pylist() == [7, 8, 9, 10]
    with pytest.raises(StoreError, match="imported from Bergson"):
        check_not_foreign(meta, index.url)


def test_a_folder_that_is_not_an_index_is_refused(tmp_path):
    with pytest.raises(InputError, match="is not a Bergson index"):
        import_bergson(ImportConfig(source=str(tmp_path), index=str(tmp_path / "idx")))
    assert not os.path.exists(tmp_path / "idx")
