"""The gradient store: one folder per index, Arrow IPC shards, manifests written last.

Layout (docs/architecture.md, "The store"):
    <index>/index.json                 spec, fingerprints, module layout, dtype, code version
    <index>/grads/shard-00000.arrow    uncompressed Arrow IPC file: doc_index, doc_id, num_tokens,
                                       grad FixedSizeList<float16|float32, D>
    <index>/grads/shard-00000.json     manifest (rows, bytes, sha256), written after the shard
A shard without its manifest does not exist; checksums are verified on read; nothing is pickled.
Files hold no timestamps, so a rebuilt index is byte-identical to the first one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import threading
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .. import fs as fsu
from ..errors import StoreError

FORMAT = "bergson-index/1"
INDEX_FILE = "index.json"
GRADS_DIR = "grads"
BLOCKS_DIR = "blocks"  # per-block summaries: the manifests of a block of shards in one object
MISSING = "missing"  # check_shards: no manifest
LEASE_FILE = "lease.json"  # who is building this index (bergson_core/lease.py); survives --overwrite
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

_verified: set[tuple] = set()
_verified_lock = threading.Lock()


def shard_name(i: int) -> str:
    """shard-00000 ... shard-99999, then shard-100000 and on (at least five digits)."""
    return f"shard-{i:05d}"


_SHARD_FILE = re.compile(r"^shard-(\d+)\.(?:arrow|json)$")


def shard_number(filename: str) -> int | None:
    """The shard number in a file name written by shard_name (any number of digits), or None."""
    m = _SHARD_FILE.match(os.path.basename(filename))
    return int(m.group(1)) if m else None


def grad_schema(width: int, dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("doc_index", pa.int64()),
            ("doc_id", pa.string()),
            ("num_tokens", pa.int32()),
            ("grad", pa.list_(ARROW_DTYPES[dtype], width)),
        ]
    )


def schema_fingerprint(schema: pa.Schema) -> str:
    return hashlib.sha256(schema.to_string().encode()).hexdigest()[:16]


def cache_root() -> str:
    return os.environ.get("BERGSON_CACHE", os.path.expanduser("~/.cache/bergson"))


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Index:
    """A gradient index at a local path or an fsspec URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.path = fsu.url_to_fs(self.url, self.storage_options)
        self.local = fsu.is_local(self.fs)
        self._spec_hash: str | None = None  # of index.json, as last read by meta()

    # -- paths --------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return fsu.join(self.path, *parts)

    def shard_path(self, i: int) -> str:
        return self._p(GRADS_DIR, shard_name(i) + ".arrow")

    def manifest_path(self, i: int) -> str:
        return self._p(GRADS_DIR, shard_name(i) + ".json")

    # -- index.json -------------------------------------------------------------------------
    def exists(self) -> bool:
        return fsu.exists(self.fs, self._p(INDEX_FILE))

    def meta(self) -> dict:
        if not self.exists():
            raise StoreError(f"no index at {self.url}: build one with `bergson build {self.url} --model M --dataset D`")
        self.check_location()
        try:
            meta = fsu.read_json(self.fs, self._p(INDEX_FILE))
        except (ValueError, UnicodeDecodeError) as e:  # garbage or empty file: not an index we can trust
            raise StoreError(f"{self.url}/{INDEX_FILE} is unreadable ({type(e).__name__}): "
                             "rebuild with --overwrite") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            meta = meta if isinstance(meta, dict) else {}
            raise StoreError(f"{self.url} is not a {FORMAT} index (format={meta.get('format')!r}): "
                             "use another path, or --overwrite to replace it")
        self._spec_hash = meta.get("spec_hash")
        return meta

    def check_location(self) -> None:
        """Refuse an index path that is an existing file (it can hold no index folder)."""
        if self.local and os.path.isfile(self.path):
            raise StoreError(f"index path {self.url} is an existing file, not a folder: pass a folder path")

    def spec_hash(self) -> str | None:
        """The spec hash of index.json (read once per Index object; None when there is no index)."""
        if self._spec_hash is None and self.exists():
            self.meta()
        return self._spec_hash

    def write_meta(self, meta: dict) -> None:
        fsu.write_json(self.fs, self._p(INDEX_FILE), {"format": FORMAT, **meta})

    def check(self, meta: dict, overwrite: bool = False) -> bool:
        """True when an index with this exact spec, model and dataset is already here; raise when
        a different one is (unless overwrite); False when there is none."""
        self.check_location()
        if not self.exists():
            return False
        try:
            old = self.meta()
        except StoreError:
            if overwrite:  # a garbage index.json is replaced like any other index
                return False
            raise
        same = all(old.get(k) == meta[k] for k in ("spec_hash", "dataset", "model_fingerprint"))
        if same or overwrite:
            return same
        diff = sorted(k for k in meta["spec"] if old.get("spec", {}).get(k) != meta["spec"][k])
        what = f"options differ: {', '.join(diff)}" if diff else "the model or dataset contents differ"
        raise StoreError(f"index {self.url} was built with a different spec ({what}): use another path or --overwrite")

    def ensure(self, meta: dict, overwrite: bool = False) -> None:
        """Create index.json, or check that an existing index was built with the same spec."""
        if self.check(meta, overwrite):
            return
        if self.exists():  # overwrite of a different index
            self.delete()
        self.write_meta(meta)

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by a writer that was killed mid-write (local only)."""
        if not self.local:
            return 0  # remote writes are single PUTs: nothing partial can exist
        stale = glob.glob(os.path.join(self.path, GRADS_DIR, "*.tmp-*"))
        for path in stale:
            os.remove(path)
        return len(stale)

    def delete(self) -> None:
        """Remove the index, but not the lease of the build that is replacing it."""
        if not fsu.exists(self.fs, self.path):
            return
        for p in self.fs.ls(self.path, detail=False):
            if p.rstrip("/").rsplit("/", 1)[-1] not in (LEASE_FILE, LEASE_FILE + ".lock"):
                fsu.remove(self.fs, p, recursive=True)

    # -- shards ------------------------------------------------------------------------------
    def has_shard(self, i: int) -> bool:
        return fsu.exists(self.fs, self.manifest_path(i))

    def manifest(self, i: int) -> dict:
        return fsu.read_json(self.fs, self.manifest_path(i))

    def write_shard(
        self,
        i: int,
        start: int,
        doc_ids: list[str],
        num_tokens: list[int],
        grads: np.ndarray,
        dtype: str,
        extra: dict | None = None,
        spec_hash: str | None = None,
    ) -> dict:
        """Write shard i (rows start..start+n) then its manifest; return the manifest. With
        `spec_hash` (the spec the rows were computed under) the manifest records it, and it is only
        published while index.json still has that spec."""
        data, schema = encode_grads(start, doc_ids, num_tokens, grads, dtype, what=f"shard {i}")
        n = grads.shape[0]
        fsu.write_bytes(self.fs, self.shard_path(i), data)
        manifest = {
            "shard": i,
            "file": shard_name(i) + ".arrow",
            "start": start,
            "stop": start + n,
            "rows": n,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "schema": schema_fingerprint(schema),
            **(extra or {}),
        }
        if spec_hash is not None:
            manifest["spec_hash"] = spec_hash
            self.check_publish(i, spec_hash)
        fsu.write_json(self.fs, self.manifest_path(i), manifest)  # last: makes the shard exist
        return manifest

    def listing(self) -> tuple[dict[int, int], dict[int, int]]:
        """One listing of grads/: (data file sizes, manifest sizes), by shard number.
        On S3 that is one paginated LIST (1,000 keys a request), not one request per shard."""
        folder = self._p(GRADS_DIR)
        if not self.local:
            self.fs.invalidate_cache(folder)
        try:
            infos = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}, {}
        sizes, manifests = {}, {}
        for info in infos:
            name = info["name"]
            if (n := shard_number(name)) is None:
                continue
            if name.endswith(".arrow"):
                sizes[n] = info.get("size")
            else:
                manifests[n] = info.get("size")
        return sizes, manifests

    def shard_file_sizes(self) -> dict[int, int]:
        """Size in bytes of every shard data file present, by shard number (one listing)."""
        return self.listing()[0]

    def write_block_summary(self, manifests: list[dict]) -> None:
        """The manifests of one block of shards in one object (blocks/shard-A-shard-B.json), so that
        a later completion check reads one object per block instead of one per shard."""
        if not manifests:
            return
        shards = sorted(m["shard"] for m in manifests)
        name = f"{shard_name(shards[0])}-{shard_name(shards[-1])}.json"
        fsu.write_json(self.fs, self._p(BLOCKS_DIR, name), {str(m["shard"]): m for m in manifests})

    def block_summaries(self) -> dict[int, dict]:
        """Every manifest recorded in a block summary, by shard (one listing plus one read per block)."""
        folder = self._p(BLOCKS_DIR)
        if not self.local:
            self.fs.invalidate_cache(folder)
        try:
            paths = sorted(p for p in self.fs.ls(folder, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return {}
        out: dict[int, dict] = {}
        for path, raw in self._read_many(paths).items():
            if isinstance(raw, bytes):
                with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
                    out.update({int(k): m for k, m in json.loads(raw).items()})
        return out

    def _read_many(self, paths: list[str]) -> dict[str, bytes | Exception]:
        """Whole objects at once (s3fs reads them concurrently); a failed read comes back as its error."""
        if not paths:
            return {}
        if self.local:
            out: dict[str, bytes | Exception] = {}
            for p in paths:
                try:
                    with open(p, "rb") as f:
                        out[p] = f.read()
                except OSError as e:
                    out[p] = e
            return out
        got = self.fs.cat(paths, on_error="return")
        return {p: got.get(p, FileNotFoundError(p)) for p in paths}

    def check_shards(self, shards, checksum: bool) -> dict[int, str]:
        """Why each of `shards` cannot be skipped by a build (MISSING: no manifest); the shards not
        in the result are complete. Existence and sizes come from one listing of grads/, manifests
        from the block summaries, and only the manifests of shards no summary vouches for (the
        sizes of data file and manifest, and the spec, must match) are read, all at once. With `checksum` every shard is checksummed."""
        sizes, listed = self.listing()
        known = self.block_summaries() if not checksum else {}
        spec = self.spec_hash()
        out: dict[int, str] = {}
        unread = []
        for i in shards:
            if i not in listed:
                out[i] = MISSING
            elif i not in sizes:
                out[i] = "data file missing"
            elif (m := known.get(i)) is None or m.get("bytes") != sizes[i] or m.get("spec_hash") not in (None, spec) \
                    or listed[i] != len(fsu.json_bytes(m)):  # a manifest rewritten since: read it
                unread.append(i)
        raws = self._read_many([self.manifest_path(i) for i in unread])
        for i in unread:
            if (why := self.verify_shard(i, checksum, manifest=raws[self.manifest_path(i)], size=sizes[i])) is not None:
                out[i] = why
        return out

    def check_publish(self, i: int, spec_hash: str) -> None:
        """Refuse to publish a shard computed under another spec than index.json's now (another
        build replaced it with --overwrite), or by a build whose lease was taken over."""
        from ..lease import check_not_lost

        self._spec_hash = None  # read index.json afresh, not the copy from the start of the build
        current = self.spec_hash()
        if current != spec_hash:
            raise StoreError(f"index.json of {self.url} was replaced while this build ran (spec {spec_hash} -> "
                             f"{current}): shard {i} not published; rerun the build you want")
        check_not_lost(self.url)

    def check_spec(self, manifest: dict) -> None:
        """Refuse a shard whose manifest was computed under another spec than index.json's."""
        got, want = manifest.get("spec_hash"), self.spec_hash()
        if got is not None and want is not None and got != want:
            raise StoreError(f"shard {manifest.get('shard')} of {self.url} was computed under spec {got}, "
                             f"index.json has {want} (two builds wrote here?): rerun the build to redo it")

    def verify_shard(self, i: int, checksum: bool, manifest: bytes | Exception | None = None,
                     size: int | None = None) -> str | None:
        """Why shard i cannot be trusted (None when it can): unreadable manifest, another spec,
        missing data file, wrong size, and with `checksum` a wrong sha256. `manifest` (its raw
        bytes, or the error reading them) and `size` (of its data file) may come from a listing."""
        try:
            if isinstance(manifest, Exception):
                raise manifest
            manifest = self.manifest(i) if manifest is None else json.loads(manifest)
            self.check_spec(manifest)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            return "unreadable manifest"
        except FileNotFoundError:
            return MISSING
        except StoreError:
            return "computed under another spec"
        path = self.shard_path(i)
        if size is None:
            if not fsu.exists(self.fs, path):
                return "data file missing"
            size = os.path.getsize(path) if self.local else self.fs.info(path).get("size")
        if size != manifest.get("bytes"):
            return f"size {size} != {manifest.get('bytes')} in its manifest"
        if checksum:
            try:
                self._local_copy(i, manifest)
            except StoreError:
                return "checksum mismatch"
        return None

    def manifests(self) -> list[dict]:
        """Manifests of all complete shards, in shard order."""
        pattern = self._p(GRADS_DIR, "shard-*.json")
        if not self.local:
            self.fs.invalidate_cache(self._p(GRADS_DIR))
        found = sorted(self.fs.glob(pattern))
        return [self._read_manifest(p) for p in found]

    def _read_manifest(self, path: str) -> dict:
        try:
            return fsu.read_json(self.fs, path)
        except (ValueError, UnicodeDecodeError):
            raise StoreError(f"manifest {path} of {self.url} is unreadable: rerun the build to redo it") from None

    def _local_copy(self, i: int, manifest: dict) -> str:
        """Path of a verified local file for shard i: the file itself, or a cached download."""
        if self.local:
            path = self.shard_path(i)
            if not os.path.exists(path):
                raise StoreError(f"shard {i} of {self.url} is missing its data file: rerun the build to redo it")
        else:
            path = os.path.join(cache_root(), "shards", manifest["sha256"] + ".arrow")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
                self.fs.get_file(self.shard_path(i), tmp)
                os.replace(tmp, path)
        st = os.stat(path)
        key = (path, manifest["sha256"], st.st_size, st.st_mtime_ns)  # a rewritten file is checked again
        with _verified_lock:
            if key in _verified:
                return path
        if _sha256_file(path) != manifest["sha256"]:
            if not self.local:
                os.remove(path)
            raise StoreError(
                f"shard {i} of {self.url} fails its checksum: delete {shard_name(i)}.json and rerun the build"
            )
        with _verified_lock:
            _verified.add(key)
        return path

    def open_shard(self, i: int, manifest: dict | None = None) -> pa.Table:
        """The shard as an Arrow table, memory-mapped from a verified local file."""
        manifest = manifest or self.manifest(i)
        self.check_spec(manifest)
        path = self._local_copy(i, manifest)
        with pa.memory_map(path, "r") as source:
            table = ipc.open_file(source).read_all()
        if table.num_rows != manifest["rows"]:
            raise StoreError(f"shard {i} of {self.url} has {table.num_rows} rows, manifest says {manifest['rows']}")
        return table

    def iter_shards(self) -> Iterator[tuple[dict, pa.Table]]:
        for m in self.manifests():
            yield m, self.open_shard(m["shard"], m)


def encode_grads(
    start: int, doc_ids: list[str], num_tokens: list[int], grads: np.ndarray, dtype: str, what: str = "gradients"
) -> tuple[bytes, pa.Schema]:
    """Rows [n, D] as the bytes of an uncompressed Arrow IPC file with the gradient schema."""
    n, width = grads.shape
    values = grads.astype(np.float16 if dtype == "float16" else np.float32, copy=False)  # no copy if it already is
    if not all(np.isfinite(values[i : i + 256]).all() for i in range(0, n, 256)):  # no [n, D] bool array
        hint = " (float16 overflow: rebuild with --grad-dtype float32)" if np.isfinite(grads).all() else ""
        raise StoreError(f"{what} has non-finite gradients{hint}")
    schema = grad_schema(width, dtype)
    flat = pa.array(values.reshape(-1), type=ARROW_DTYPES[dtype])
    table = pa.table(
        [
            pa.array(np.arange(start, start + n, dtype=np.int64)),
            pa.array(doc_ids, type=pa.string()),
            pa.array(np.asarray(num_tokens, dtype=np.int32)),
            pa.FixedSizeListArray.from_arrays(flat, width),
        ],
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes(), schema


def read_grads(url: str, storage_options: dict | None = None) -> pa.Table:
    """Read a whole gradient file (e.g. query gradients) written with encode_grads."""
    fs, path = fsu.url_to_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return ipc.open_file(pa.BufferReader(f.read())).read_all()


def grad_matrix(table: pa.Table) -> np.ndarray:
    """Zero-copy [rows, D] view of the shard's gradient column (a copy only when it has several
    chunks: combine_chunks copies even a single chunk, and .values would ignore a slice offset)."""
    col = table.column("grad")
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
