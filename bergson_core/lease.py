"""A lease on an index: one build writes into it at a time.

The lease is INDEX/lease.json: the holder's run id, host, pid and a heartbeat (wall-clock time and a
counter) that a thread rewrites every TTL/4 seconds. A second build finds a live lease and is
refused with one line; a lease is stale (and taken over) when its heartbeat is older than the TTL,
or at once when its holder was a process of this host that is gone (a killed build can be rerun
straight away).

Writes are conditional, so two builds cannot both believe they hold it: locally the lease is
created with an atomic link (fails when it exists) and replaced under an flock of the index folder after
re-reading it; on S3 it is created with If-None-Match: * and replaced with If-Match: <etag>. A store without
conditional writes falls back to write, wait, read back.

Leases are held per process and re-entrant: the CLI takes it before its head-start shard and the
build flow in the same process joins it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from . import fs as fsu
from .errors import StoreError
from .index.store import LEASE_FILE, Index

TTL = float(os.environ.get("BERGSON_LEASE_TTL", "60"))  # seconds without a heartbeat before a takeover
SETTLE = 1.0  # write-then-verify fallback: how long a competing write may take to show


class IndexBusyError(StoreError):
    """Another live build holds the index's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, index: Index, run_id: str | None = None, ttl: float = TTL):
        self.index, self.ttl = index, ttl
        self.run_id = run_id or uuid.uuid4().hex
        self.path = fsu.join(index.path, LEASE_FILE)
        self.beats = 0
        self.lost_to: dict | None = None  # the record that replaced ours, once the heartbeat sees one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.count = 0  # re-entrant holds in this process

    # -- the record -----------------------------------------------------------------------------
    def _record(self) -> bytes:
        rec = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
               "heartbeat": time.time(), "beats": self.beats, "ttl": self.ttl}
        return json.dumps(rec, sort_keys=True).encode()

    def _read(self) -> tuple[dict | None, object]:
        """(record or None when absent, token for a conditional replace). A garbage record is {}."""
        fs = self.index.fs
        if self.index.local:
            try:
                raw = open(self.path, "rb").read()
            except FileNotFoundError:
                return None, None
            token = raw
        else:
            if not fsu.exists(fs, self.path):
                return None, None
            token = fs.info(self.path).get("ETag")  # before the body: an etag older than the body fails safe
            raw = fs.cat_file(self.path)
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = {}
        return (rec if isinstance(rec, dict) else {}), token

    def stale(self, rec: dict) -> bool:
        if not rec.get("run_id"):
            return True  # unreadable: no build can be relying on it
        if rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1))):
            return True
        return time.time() - float(rec.get("heartbeat", 0)) > float(rec.get("ttl", self.ttl))

    # -- conditional writes ---------------------------------------------------------------------
    def _create(self, data: bytes) -> bool:
        if self.index.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, self.path)  # atomic, and fails when a lease exists
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        try:
            self.index.fs.pipe_file(self.path, data, mode="create")
            return True
        except TypeError:  # a store without conditional writes
            return self._write_and_verify(data)
        except Exception as e:
            if _precondition_failed(e):
                return False
            raise

    def _replace(self, data: bytes, token: object) -> bool:
        if self.index.local:
            import fcntl

            folder = os.open(os.path.dirname(self.path), os.O_RDONLY)  # lock the folder: no lock file left
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
                try:
                    if open(self.path, "rb").read() != token:
                        return False
                except FileNotFoundError:
                    return False
                fsu.write_bytes(self.index.fs, self.path, data)
                return True
            finally:
                os.close(folder)  # releases the flock
        try:
            self.index.fs.pipe_file(self.path, data, IfMatch=token)
            return True
        except TypeError:
            return self._write_and_verify(data)
        except Exception as e:
            if _precondition_failed(e):
                return False
            raise

    def _write_and_verify(self, data: bytes) -> bool:
        fsu.write_bytes(self.index.fs, self.path, data)
        time.sleep(SETTLE)
        rec, _ = self._read()
        return bool(rec) and rec.get("run_id") == self.run_id

    # -- taking, keeping and giving back -------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, or raise IndexBusyError naming the live holder."""
        self.index.check_location()
        for _ in range(5):  # a lost race re-reads; a live holder raises
            rec, token = self._read()
            if rec is None:
                if self._create(self._record()):
                    return self._start()
                continue
            if rec.get("run_id") == self.run_id or self.stale(rec):
                if self._replace(self._record(), token):
                    return self._start()
                continue
            age = time.time() - float(rec.get("heartbeat", 0))
            raise IndexBusyError(
                f"index {self.index.url} is being built by another run ({rec.get('run_id')}, pid {rec.get('pid')} "
                f"on {rec.get('host')}, heartbeat {age:.0f} s ago): wait for it to finish (a lease without a "
                f"heartbeat for {rec.get('ttl', self.ttl):.0f} s is taken over)")
        raise IndexBusyError(f"index {self.index.url}: could not take its lease (other builds keep taking it): retry")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="bergson-lease")
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.beat()
            except Exception:  # an unreachable store: the next beat tries again
                pass

    def beat(self) -> None:
        rec, token = self._read()
        if rec is None or rec.get("run_id") != self.run_id:
            self.lost_to = rec or {}
            self._stop.set()
            return
        self.beats += 1
        self._replace(self._record(), token)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            rec, _ = self._read()
            if rec and rec.get("run_id") == self.run_id:
                fsu.remove(self.index.fs, self.path)
        except Exception:  # the next build takes a stale lease over anyway
            pass


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs reports a failed If-None-Match as FileExistsError and a failed If-Match as an OSError."""
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, FileExistsError) or any(
        t in text for t in ("PreconditionFailed", "pre-conditions", "412", "ConditionalRequestConflict"))


_held: dict[str, Lease] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def hold(url: str, storage_options: dict | None = None, run_id: str | None = None):
    """Hold the index's lease for the block (joined when this process holds it already)."""
    key = url.rstrip("/")
    with _held_lock:
        lease = _held.get(key)
        if lease is None:
            lease = Lease(Index(url, storage_options), run_id)
            lease.acquire()
            _held[key] = lease
        lease.count += 1
    try:
        yield lease
    finally:
        with _held_lock:
            lease.count -= 1
            if lease.count == 0:
                del _held[key]
                lease.release()


def check_not_lost(url: str) -> None:
    """Raise when this process's lease on the index was taken over (it was stale: a long pause)."""
    lease = _held.get(url.rstrip("/"))
    if lease is not None and lease.lost_to is not None:
        raise StoreError(f"the lease on index {url} was taken over by run {lease.lost_to.get('run_id')} while this "
                         "build was stalled: this build stops; the other one continues")
