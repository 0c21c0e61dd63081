"""Moving an index to and from Bergson 2.5.1's on-disk layout (`bergson export` / `bergson import`).

Bergson's index folder (facts read from its `bergson/data.py` and `bergson/gradients.py`):
    gradients.bin            the rows, row-major [num_grads, sum(grad_sizes)], raw, in `base_dtype`
    info.json                {"attribute_tokens": false, "num_items": N, "num_grads": N,
                              "grad_sizes": {module: width, ...} (the column order), "base_dtype": ...}
    data.hf                  a `datasets` folder with one row per document (Bergson writes `length`)
    processor_config.yaml    projection settings; with normalizers.pth, hessians.pth and
                             hessians_eigen.pth (torch files) what its Attributor loads
Module names are relative to the base model (`layers.0.mlp...`, not `gpt_neox.layers.0.mlp...`).

The random projections of the two tools differ, so gradients cross with their own projection:
an export says `projection_dim: null` (Bergson then computes no query gradient of its own that
would silently disagree: score it with query gradients from this project), and an imported Bergson
index is marked (`origin`) so `bergson score` refuses to compute query gradients for it. An export
also carries this project's index.json (bergson-prefect.json), so importing it back restores the
very same shards.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..errors import InputError, StoreError
from .store import Index, grad_matrix

ORIGIN_FILE = "bergson-prefect.json"  # this project's index.json, inside an export
BERGSON_VERSION = "2.5.1"
DTYPES = {"float16": "float16", "float32": "float32", "bfloat16": "float32"}  # bfloat16 widens exactly


def base_prefix(model: str | None) -> str:
    """The base-model prefix a causal LM puts before its modules' names ("gpt_neox."), "" when the
    model cannot be read."""
    if not model:
        return ""
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model))]
        return cls.base_model_prefix + "." if cls.base_model_prefix else ""
    except Exception:  # a hub id offline, a GGUF file, an unknown architecture
        return ""


def export_bergson(cfg) -> dict:
    """Write index `cfg.index` as a Bergson index folder `cfg.output`."""
    import datasets
    import torch
    import yaml

    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    manifests = index.manifests()
    if len(manifests) != meta["num_shards"]:
        raise StoreError(f"index {cfg.index} is incomplete ({len(manifests)}/{meta['num_shards']} shards): "
                         "finish it with `bergson build` before exporting")
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise InputError(f"{cfg.output} exists: choose another folder or pass --overwrite")
    prefix = base_prefix(meta["spec"].get("model"))
    names = [m["name"][len(prefix):] if prefix and m["name"].startswith(prefix) else m["name"]
             for m in meta["modules"]]
    tmp = f"{cfg.output.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    doc_ids, lengths = [], []
    with open(os.path.join(tmp, "gradients.bin"), "wb") as out:
        for m, table in index.iter_shards():  # shard by shard: memory bounded by one shard
            out.write(np.ascontiguousarray(grad_matrix(table)).tobytes())
            doc_ids += table.column("doc_id").to_pylist()
            lengths += table.column("num_tokens").to_pylist()
    rows = len(doc_ids)
    info = {"attribute_tokens": False, "num_items": rows, "num_grads": rows,
            "grad_sizes": {n: m["width"] for n, m in zip(names, meta["modules"])}, "base_dtype": meta["grad_dtype"]}
    with open(os.path.join(tmp, "info.json"), "w") as f:
        json.dump(info, f, indent=2)
    datasets.Dataset.from_dict({"length": lengths, "doc_id": doc_ids}).save_to_disk(os.path.join(tmp, "data.hf"))
    spec = meta["spec"]
    processor = {"projection_dim": None, "reshape_to_square": False, "projection_type": spec["projection_type"],
                 "projection_target": "per_module", "projection_scale": "jl", "include_bias": spec["include_bias"],
                 "projection_seed": None, "projection_version": 2}
    with open(os.path.join(tmp, "processor_config.yaml"), "w") as f:
        yaml.safe_dump(processor, f, sort_keys=False)
    for name in ("normalizers.pth", "hessians.pth", "hessians_eigen.pth"):  # none: Bergson's loader wants them
        torch.save({}, os.path.join(tmp, name))
    with open(os.path.join(tmp, ORIGIN_FILE), "w") as f:
        json.dump({"meta": meta, "module_prefix": prefix}, f, indent=2, sort_keys=True)
    if os.path.exists(cfg.output):
        shutil.rmtree(cfg.output)
    os.replace(tmp, cfg.output)
    return {"index": cfg.index, "output": cfg.output, "format": "bergson", "documents": rows,
            "row_width": meta["row_width"], "dtype": meta["grad_dtype"], "modules": len(names),
            "bytes": os.path.getsize(os.path.join(cfg.output, "gradients.bin"))}


def _read_info(source: str) -> dict:
    path = os.path.join(source, "info.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(source, "gradients.bin")):
        raise InputError(f"{source} is not a Bergson index (no info.json and gradients.bin): give the folder "
                         "`bergson build` wrote")
    info = json.load(open(path))
    if info.get("attribute_tokens"):
        raise InputError(f"{source} holds per-token gradients (attribute_tokens): only per-document indexes import")
    dtype = info.get("base_dtype")
    if dtype not in DTYPES:
        raise InputError(f"{source} stores {dtype} gradients: float16, float32 and bfloat16 import")
    return info


def _bergson_meta(cfg, source: str, info: dict) -> tuple[dict, str]:
    """index.json for an index Bergson built: its settings, this project's module names, and an
    `origin` that keeps this project from computing query gradients for it."""
    import yaml

    from ..config import CODE_VERSION, spec_hash

    conf = {}
    if os.path.exists(os.path.join(source, "config.yaml")):
        steps = yaml.safe_load(open(os.path.join(source, "config.yaml"))).get("steps") or [{}]
        conf = (steps[0].get("build") or {}).get("index_cfg") or {}
    model = cfg.model or conf.get("model") or ""
    prefix = base_prefix(model)
    offset, modules = 0, []
    for name, width in info["grad_sizes"].items():
        modules.append({"name": prefix + name, "in_features": 0, "out_features": 0, "has_bias": False,
                        "transposed": False, "width": width, "offset": offset})
        offset += width
    data = conf.get("data") or {}
    spec = {"model": model, "dataset": data.get("dataset", ""), "split": data.get("split", "train"),
            "projection_dim": conf.get("projection_dim"), "projection_type": conf.get("projection_type"),
            "include_bias": conf.get("include_bias", False), "loss_reduction": conf.get("loss_reduction"),
            "grad_dtype": DTYPES[info["base_dtype"]], "shard_size": cfg.shard_size, "code_version": CODE_VERSION,
            "origin": "bergson"}
    rows = info["num_grads"]
    meta = {"spec": spec, "spec_hash": spec_hash(spec), "code_version": CODE_VERSION,
            "model_fingerprint": "bergson-import", "dataset": {"uri": spec["dataset"], "fingerprint": "", "rows": rows},
            "modules": modules, "row_width": offset, "grad_dtype": spec["grad_dtype"], "shard_size": cfg.shard_size,
            "num_shards": -(-rows // cfg.shard_size),
            "origin": {"tool": "bergson", "version": BERGSON_VERSION, "source": source}}
    return meta, prefix


def import_bergson(cfg) -> dict:
    """Read Bergson index folder `cfg.source` into a new index `cfg.index` (index.json, then
    shards, each manifest last)."""
    import datasets

    from .build import plan_shards

    info = _read_info(cfg.source)
    origin = os.path.join(cfg.source, ORIGIN_FILE)
    meta = json.load(open(origin))["meta"] if os.path.exists(origin) else _bergson_meta(cfg, cfg.source, info)[0]
    meta = {k: v for k, v in meta.items() if k != "format"}
    width, rows = sum(info["grad_sizes"].values()), info["num_grads"]
    if width != meta["row_width"]:
        raise InputError(f"{cfg.source}: info.json's grad_sizes ({width} columns) do not match {ORIGIN_FILE}")
    grads = np.memmap(os.path.join(cfg.source, "gradients.bin"), dtype=np.dtype(info["base_dtype"]), mode="r",
                      shape=(rows, width))
    data = datasets.load_from_disk(os.path.join(cfg.source, "data.hf")) if os.path.isdir(
        os.path.join(cfg.source, "data.hf")) else None
    if data is not None and len(data) != rows:
        raise InputError(f"{cfg.source}: data.hf has {len(data)} rows, gradients.bin {rows}")
    lengths = data["length"] if data is not None and "length" in data.column_names else [0] * rows
    ids = data["doc_id"] if data is not None and "doc_id" in data.column_names else [str(i) for i in range(rows)]
    index = Index(cfg.index, cfg.storage_options)
    if index.exists() or (index.local and os.path.isdir(index.path) and os.listdir(index.path)):
        if not cfg.overwrite:
            raise StoreError(f"{cfg.index} exists: choose another path or pass --overwrite")
        index.delete()
    index.write_meta(meta)
    nbytes = 0
    for shard, start, stop in plan_shards(rows, meta["shard_size"]):
        block = np.asarray(grads[start:stop])
        if block.dtype != np.float16:
            block = block.astype(np.float32)  # bfloat16 -> float32 is exact
        m = index.write_shard(shard, start, [str(i) for i in ids[start:stop]], lengths[start:stop], block,
                              meta["grad_dtype"], spec_hash=meta["spec_hash"])
        nbytes += m["bytes"]
    return {"source": cfg.source, "index": cfg.index, "documents": rows, "shards": meta["num_shards"],
            "bytes": nbytes, "origin": (meta.get("origin") or {}).get("tool", "bergson-prefect")}


def check_not_foreign(meta: dict, url: str) -> None:
    """Refuse to compute query gradients for an index whose rows another tool projected."""
    if (meta.get("origin") or {}).get("tool") == "bergson":
        raise StoreError(f"index {url} was imported from Bergson, whose random projection differs from this "
                         "project's: query gradients computed here would not match its rows; score it with query "
                         "gradients from Bergson (benchmarks/bergson_interop.py shows how)")
