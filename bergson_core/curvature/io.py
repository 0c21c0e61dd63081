"""Statistics and preconditioners in the store, as safetensors + a JSON manifest written LAST.

    <index>/stats/<kind>/shard-00003.safetensors   partial sums of one shard
    <index>/stats/<kind>/shard-00003.json          its manifest (counts, meta, bytes, sha256)
    <index>/stats/<kind>/total.safetensors|.json   the reduced total
    <index>/precond/<name>/factors.safetensors     fitted float64 factors
    <index>/precond/<name>/precond.json            manifest: strategy, space, blocks, meta, sha256

A file without its manifest does not exist; checksums are verified on read; no pickle anywhere.
Non-finite values are refused before anything is written.
"""

from __future__ import annotations

import hashlib
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import fs as fsu
from ..errors import StoreError
from .registry import Fit
from .space import Space, blocks_from_json
from .stats import StatisticError, Stats

STATS_DIR = "stats"
PRECOND_DIR = "precond"
FACTORS_FILE = "factors.safetensors"
PRECOND_MANIFEST = "precond.json"
TOTAL = "total"
FORMAT_STATS = "bergson-stats/1"
FORMAT_PRECOND = "bergson-precond/1"


def _where(index, storage_options: dict[str, Any] | None = None):
    """(fs, root path) of an Index object or an index URL."""
    if hasattr(index, "fs") and hasattr(index, "path"):
        return index.fs, index.path
    return fsu.url_to_fs(str(index), storage_options)


def stats_name(shard: int | None) -> str:
    return TOTAL if shard is None else f"shard-{shard:05d}"


def _write(fs, base: str, tensors: dict, manifest: dict, data_name: str, manifest_name: str) -> dict:
    data = st_save({k: v.contiguous() for k, v in tensors.items()})
    manifest = {**manifest, "file": data_name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    fsu.write_bytes(fs, fsu.join(base, data_name), data)
    fsu.write_json(fs, fsu.join(base, manifest_name), manifest)  # last: makes it exist
    return manifest


def _read(fs, base: str, manifest: dict, what: str) -> dict:
    path = fsu.join(base, manifest["file"])
    if not fsu.exists(fs, path):
        raise StoreError(f"{what} is missing its data file {path}: delete its manifest and recompute it")
    with fs.open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise StoreError(f"{what} fails its checksum: delete {path} and its manifest, then recompute it")
    return st_load(data)


# -- statistics ---------------------------------------------------------------------------------
def stats_dir(index, kind: str, storage_options=None) -> tuple[Any, str]:
    fs, root = _where(index, storage_options)
    return fs, fsu.join(root, STATS_DIR, kind)


def has_stats(index, kind: str, shard: int | None = None, storage_options=None) -> bool:
    fs, base = stats_dir(index, kind, storage_options)
    return fsu.exists(fs, fsu.join(base, stats_name(shard) + ".json"))


def save_stats(index, stats: Stats, shard: int | None = None, storage_options=None) -> dict:
    """Write a shard's partial (or the total, shard=None); returns the manifest."""
    stats.check_finite(f" ({stats_name(shard)})")
    fs, base = stats_dir(index, stats.kind, storage_options)
    name = stats_name(shard)
    manifest = {"format": FORMAT_STATS, "kind": stats.kind, "shard": shard, "counts": stats.counts,
                "meta": stats.meta, "fingerprint": stats.fingerprint()}
    return _write(fs, base, stats.tensors, manifest, name + ".safetensors", name + ".json")


def load_stats(index, kind: str, shard: int | None = None, storage_options=None) -> Stats:
    fs, base = stats_dir(index, kind, storage_options)
    name = stats_name(shard)
    mpath = fsu.join(base, name + ".json")
    if not fsu.exists(fs, mpath):
        raise StoreError(f"no {kind} statistics {name} under {base}: compute them first (`bergson fit`)")
    m = fsu.read_json(fs, mpath)
    if m.get("format") != FORMAT_STATS:
        raise StoreError(f"{mpath} is not a {FORMAT_STATS} manifest")
    tensors = _read(fs, base, m, f"{kind} statistics {name}")
    stats = Stats(m["kind"], tensors, {k: int(v) for k, v in m["counts"].items()}, m["meta"])
    stats.check_finite(f" ({name})")
    return stats


def list_stats_shards(index, kind: str, storage_options=None) -> list[int]:
    """Shard ids whose partial statistics of `kind` are complete (manifest present)."""
    fs, base = stats_dir(index, kind, storage_options)
    if not fsu.is_local(fs):
        fs.invalidate_cache(base)
    return sorted(int(p.rsplit("shard-", 1)[1].split(".")[0]) for p in fs.glob(fsu.join(base, "shard-*.json")))


# -- preconditioners ----------------------------------------------------------------------------
def precond_dir(index, name: str, storage_options=None) -> tuple[Any, str]:
    fs, root = _where(index, storage_options)
    return fs, fsu.join(root, PRECOND_DIR, name)


def has_preconditioner(index, name: str, storage_options=None) -> bool:
    fs, base = precond_dir(index, name, storage_options)
    return fsu.exists(fs, fsu.join(base, PRECOND_MANIFEST))


def save_preconditioner(index, name: str, fit: Fit, storage_options=None) -> dict:
    """Write a fitted preconditioner under <index>/precond/<name>/; returns the manifest."""
    for k, t in fit.tensors.items():
        if not t.isfinite().all():
            raise StatisticError(f"preconditioner {name} has non-finite factor {k}: nothing was written")
    fs, base = precond_dir(index, name, storage_options)
    manifest = {"format": FORMAT_PRECOND, "name": name, "strategy": fit.strategy, "space": fit.space.to_json(),
                "blocks": [b.to_json() for b in fit.blocks], "meta": fit.meta, "fingerprint": fit.fingerprint()}
    return _write(fs, base, fit.tensors, manifest, FACTORS_FILE, PRECOND_MANIFEST)


def load_preconditioner(index, name: str, space: Space | None = None, storage_options=None) -> Fit:
    """Read a fitted preconditioner; with `space`, refuse one fitted in another gradient space."""
    fs, base = precond_dir(index, name, storage_options)
    mpath = fsu.join(base, PRECOND_MANIFEST)
    if not fsu.exists(fs, mpath):
        raise StoreError(f"no preconditioner {name!r} under {base}: fit it first (`bergson fit`)")
    m = fsu.read_json(fs, mpath)
    if m.get("format") != FORMAT_PRECOND:
        raise StoreError(f"{mpath} is not a {FORMAT_PRECOND} manifest")
    fit = Fit(m["strategy"], Space(**m["space"]), blocks_from_json(m["blocks"]), {}, m["meta"])
    if space is not None:
        fit.space.check(space, f"preconditioner {name!r}")
    fit.tensors = _read(fs, base, m, f"preconditioner {name!r}")
    return fit
