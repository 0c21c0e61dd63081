"""Cheap stamps of a build's inputs, and the "nothing to do" check that uses them.

A rerun of a finished build should not pay for importing torch, loading the model and starting
Prefect just to find every shard already written. At build time index.json records a stamp of the
model files and of the corpus files (path, size and modification time, or an object store's ETag);
a rerun whose spec hash and stamps match, and whose every shard manifest is present with a data
file that passes the checks a build applies to the shards it skips (size; checksum locally or with
--verify), is complete. Anything that does not match (or cannot be stamped, such as
a hub id) takes the normal path, which fingerprints the model and the corpus for real.

Imports only the store and fsspec, so the check costs well under a second.
"""

from __future__ import annotations

import os

from ..fs import url_to_fs

MODEL_FILES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt", ".py")


def _file_stamp(fs, info: dict) -> list:
    return [info["name"].rsplit("/", 1)[-1], info.get("size"), str(info.get("ETag") or info.get("mtime") or "")]


def path_stamp(uri: str, storage_options: dict | None = None, suffixes: tuple[str, ...] | None = None) -> list | None:
    """Stamp of a file, or of the files directly inside a folder (optionally only some suffixes);
    None when the path is not there (a hub id, for example)."""
    try:
        fs, path = url_to_fs(uri, storage_options or {})
        if not fs.exists(path):
            return None
        if fs.isdir(path):
            infos = [i for i in fs.ls(path, detail=True) if i.get("type") == "file"]
            if suffixes:
                infos = [i for i in infos if i["name"].endswith(suffixes)]
            return sorted(_file_stamp(fs, i) for i in infos)
        return [_file_stamp(fs, fs.info(path))]
    except (OSError, ValueError):
        return None


def source_stamps(cfg) -> dict | None:
    """Stamps of the model and corpus named by a BuildConfig; None when either cannot be stamped."""
    model = cfg.model
    if cfg.gguf_file:
        model = os.path.join(model, cfg.gguf_file)
    model_stamp = path_stamp(model, None, MODEL_FILES) if not cfg.revision else None
    data_stamp = path_stamp(cfg.dataset, cfg.storage_options)
    if not model_stamp or not data_stamp:
        return None
    extra = path_stamp(cfg.optimizer_state, None) if cfg.optimizer_state else []
    stamps = {"model": model_stamp, "dataset": data_stamp, "optimizer_state": extra}
    adapter = getattr(cfg, "adapter", None)
    if adapter:  # an adapter edited in place changes the gradients as much as the model does
        stamps["adapter"] = path_stamp(adapter, None, MODEL_FILES)
        if not stamps["adapter"]:
            return None
    return stamps


def nothing_to_do(cfg) -> dict | None:
    """The stored index's summary when a rerun of `cfg` has nothing to compute, else None."""
    from .store import Index

    if cfg.overwrite:
        return None
    index = Index(cfg.index, cfg.storage_options)
    try:
        if not index.exists():
            return None
        meta = index.meta()
    except Exception:  # unreadable or half-written: the normal path explains what is wrong
        return None
    stamps = meta.get("source_stamps")
    if not stamps or meta.get("spec_hash") != cfg.spec_hash() or stamps != source_stamps(cfg):
        return None
    checksum = cfg.verify if cfg.verify is not None else index.local  # as a build verifies what it skips
    if index.check_shards(range(meta["num_shards"]), checksum):
        return None  # missing, corrupt or of another spec: the normal path says so and recomputes it
    sizes = index.shard_file_sizes()
    total = sum(sizes[i] for i in range(meta["num_shards"]))
    return {"index": cfg.index, "spec_hash": meta["spec_hash"], "documents": meta["dataset"]["rows"],
            "shards": meta["num_shards"], "shards_computed": 0, "shards_skipped": meta["num_shards"],
            "tokens": 0, "bytes": 0, "stored_bytes": total, "empty_documents": 0, "tokens_per_second": 0.0,
            "seconds": 0.0, "nothing_to_do": True}
