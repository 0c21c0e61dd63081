"""What an index holds and whether it is whole: complete, missing, orphaned and corrupt shards."""

from __future__ import annotations

import os

from .. import fs as fsu
from ..errors import StoreError
from .store import GRADS_DIR, Index, shard_name, shard_number


def index_report(index: Index, verify: bool = True) -> dict:
    meta = index.meta()
    manifests = {m["shard"]: m for m in index.manifests()}
    expected = meta["num_shards"]
    arrows = {os.path.basename(p) for p in index.fs.glob(fsu.join(index.path, GRADS_DIR, "shard-*.arrow"))}
    corrupt = []
    if verify:
        for i, m in manifests.items():
            try:
                index.open_shard(i, m)
            except StoreError:
                corrupt.append(i)
    missing = [i for i in range(expected) if i not in manifests]
    orphans = sorted(a for a in arrows if shard_number(a) not in manifests)
    return {
        "index": index.url,
        "spec_hash": meta["spec_hash"],
        "model": meta["spec"]["model"],
        "dataset": meta["dataset"],
        "projection_dim": meta["spec"]["projection_dim"],
        "grad_dtype": meta["grad_dtype"],
        "row_width": meta["row_width"],
        "modules": meta["modules"],
        "shards_expected": expected,
        "shards_complete": len(manifests) - len(corrupt),
        "shards_missing": missing,
        "shards_corrupt": corrupt,
        "orphan_files": orphans,  # data files without a manifest: an interrupted write, ignored
        "bytes": sum(m["bytes"] for m in manifests.values()),
        "documents_stored": sum(m["rows"] for m in manifests.values()),
        "healthy": not missing and not corrupt,
        "shard_names": [shard_name(i) for i in sorted(manifests)],
    }
