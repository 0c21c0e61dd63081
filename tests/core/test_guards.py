"""Guards of the store against silent wrong results: manifests stamped with their spec, no shard
published under another index.json, one build per index (the lease), verified skips."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from bergson_core import lease as L
from bergson_core.errors import StoreError
from bergson_core.index.health import index_report
from bergson_core.index.store import LEASE_FILE, Index


def _meta(spec_hash: str) -> dict:
    return {"spec": {"projection_seed": 0, "model": "m", "projection_dim": 2}, "spec_hash": spec_hash, "model_fingerprint": "m",
            "dataset": {"uri": "c.jsonl", "fingerprint": "d", "rows": 4}, "row_width": 3, "num_shards": 2,
            "modules": [], "grad_dtype": "float32"}


def _write(ix: Index, i: int, spec_hash: str | None) -> dict:
    g = np.arange(6, dtype=np.float32).reshape(2, 3) + i
    return ix.write_shard(i, 2 * i, [f"d{2 * i}", f"d{2 * i + 1}"], [2, 2], g, "float32", spec_hash=spec_hash)


def test_manifest_carries_spec_and_readers_refuse_another(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    ix.write_meta(_meta("aaaa"))
    assert _write(ix, 0, "aaaa")["spec_hash"] == "aaaa"
    _write(ix, 1, "aaaa")
    # another build replaced index.json (seed 1) while seed-0 shards stayed behind
    ix.write_meta({**_meta("bbbb"), "spec": {"projection_seed": 1, "model": "m", "projection_dim": 2}})
    fresh = Index(ix.url)
    with pytest.raises(StoreError, match="computed under spec aaaa, index.json has bbbb"):
        fresh.open_shard(0)
    report = index_report(Index(ix.url))
    assert report["shards_corrupt"] == [0, 1] and not report["healthy"]
    assert Index(ix.url).verify_shard(0, checksum=False) == "computed under another spec"


def test_shard_is_not_published_under_another_index_json(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    ix.write_meta(_meta("bbbb"))
    ix.meta()  # a writer that read index.json before it was replaced still gets refused
    with pytest.raises(StoreError, match="replaced while this build ran"):
        _write(ix, 0, "aaaa")
    assert not ix.has_shard(0)


def test_verify_shard_finds_size_and_checksum_faults(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    ix.write_meta(_meta("aaaa"))
    _write(ix, 0, "aaaa")
    _write(ix, 1, "aaaa")
    assert ix.verify_shard(0, checksum=True) is None
    data = bytearray(open(ix.shard_path(0), "rb").read())
    data[-40] ^= 0xFF  # same size, other bytes
    open(ix.shard_path(0), "wb").write(bytes(data))
    assert ix.verify_shard(0, checksum=False) is None  # a size check cannot see it
    assert ix.verify_shard(0, checksum=True) == "checksum mismatch"
    open(ix.shard_path(1), "ab").write(b"x")
    assert "size" in ix.verify_shard(1, checksum=False)
    open(ix.manifest_path(1), "w").write("{garbage")
    assert ix.verify_shard(1, checksum=False) == "unreadable manifest"


def test_garbage_index_json_is_a_store_error_and_overwrite_replaces_it(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    os.makedirs(ix.path)
    for junk in ("", "{not json", "[1, 2]", "\x00\x01binary"):
        open(os.path.join(ix.path, "index.json"), "w").write(junk)
        with pytest.raises(StoreError, match="unreadable|not a bergson-index"):
            Index(ix.url).meta()
        with pytest.raises(StoreError):
            Index(ix.url).ensure(_meta("aaaa"))
    Index(ix.url).ensure(_meta("aaaa"), overwrite=True)
    assert Index(ix.url).meta()["spec_hash"] == "aaaa"


def test_index_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="existing file"):
        Index(str(f)).ensure(_meta("aaaa"))
    with pytest.raises(StoreError, match="existing file"):
        L.Lease(Index(str(f))).acquire()


# -- the lease ------------------------------------------------------------------------------------
def _record(path, **kw) -> None:
    rec = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
           "beats": 0, "ttl": 60.0, **kw}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(json.dumps(rec))


def test_lease_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    first = L.Lease(ix, "run-1")
    first.acquire()
    try:
        with pytest.raises(L.IndexBusyError, match="being built by another run .run-1"):
            L.Lease(ix, "run-2").acquire()
    finally:
        first.release()
    assert not os.path.exists(os.path.join(ix.path, LEASE_FILE))
    path = os.path.join(ix.path, LEASE_FILE)
    _record(path, pid=2**22 + 17)  # a process of this host that is gone (a kill -9): taken over at once
    L.Lease(ix, "run-3").acquire()
    assert json.load(open(path))["run_id"] == "run-3"
    _record(path, host="elsewhere", heartbeat=time.time() - 120)  # no heartbeat for 2 min: stale
    L.Lease(ix, "run-4").acquire()
    _record(path, host="elsewhere")  # alive elsewhere
    with pytest.raises(L.IndexBusyError):
        L.Lease(ix, "run-5").acquire()


def test_lease_is_reentrant_survives_overwrite_and_notices_a_takeover(tmp_path):
    ix = Index(str(tmp_path / "ix"))
    with L.hold(ix.url) as outer:
        with L.hold(ix.url) as inner:  # the flow joins the CLI's lease
            assert inner is outer
        ix.write_meta(_meta("aaaa"))
        ix.ensure(_meta("bbbb"), overwrite=True)  # deletes the index but not the lease
        assert json.load(open(os.path.join(ix.path, LEASE_FILE)))["run_id"] == outer.run_id
        outer.beat()
        assert outer.lost_to is None
        _record(os.path.join(ix.path, LEASE_FILE), run_id="thief")  # taken over while we stalled
        outer.beat()
        with pytest.raises(StoreError, match="taken over by run thief"):
            _write(ix, 0, "bbbb")
        assert not ix.has_shard(0)
