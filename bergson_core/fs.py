"""Thin fsspec helpers: one way to reach local folders and object stores, with atomic writes.

Locally a file is written to a temporary name and renamed, so a reader never sees half a file;
remotely a whole-object PUT gives the same guarantee.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None):
    """Return (filesystem, path) for a local path or a URL such as s3://bucket/prefix. A remote
    filesystem comes wrapped so that its calls ride out an outage (bergson_core/retry.py)."""
    from .secrets import resolve

    fs, path = fsspec.core.url_to_fs(url, **resolve(storage_options or {}))  # secrets named, not passed
    if not is_local(fs):
        from .retry import RetryingFS

        fs = RetryingFS(fs, url, storage_options or {})
    return fs, path.rstrip("/")


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes(fs, path: str, data: bytes) -> None:
    """Write a whole file atomically (rename locally, single PUT remotely)."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def json_bytes(obj: Any) -> bytes:
    """The bytes write_json writes for obj (deterministic: sorted keys, no timestamps)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(fs, path: str, obj: Any) -> None:
    write_bytes(fs, path, json_bytes(obj))


def read_json(fs, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def exists(fs, path: str) -> bool:
    if not is_local(fs):
        fs.invalidate_cache(path)
    return fs.exists(path)


def remove(fs, path: str, recursive: bool = False) -> None:
    if exists(fs, path):
        fs.rm(path, recursive=recursive)
