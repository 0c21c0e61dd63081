"""Riding out object-store outages: every call of a remote filesystem is retried with exponential
backoff while its fault is transient (connection refused, timeouts, 5xx), for up to
BERGSON_STORE_RETRY_SECONDS (default 300 s) from the first failure. Then one line names the
endpoint. Faults that retrying cannot fix (a missing bucket, access denied) fail at once.

fsspec's own retries (s3fs: a few seconds) run inside each attempt; this budget is the outer one.
Reads through `open(path, "rb")` are whole-object reads, so a broken read is retried too.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any, Callable

from .errors import StoreError, StoreUnavailable

RETRY_ENV = "BERGSON_STORE_RETRY_SECONDS"
RETRIED = {"exists", "info", "cat_file", "cat", "pipe_file", "pipe", "get_file", "put_file", "glob", "ls", "rm",
           "rm_file", "find", "isfile", "isdir", "size", "makedirs", "mkdir"}
_TRANSIENT_NAMES = ("ConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
                    "IncompleteRead", "ResponseStreamingError", "ProxyConnectionError")
_TRANSIENT_TEXT = ("ServiceUnavailable", "SlowDown", "InternalError", "Service Unavailable", "Bad Gateway",
                   "Gateway Timeout", "Internal Server Error", "Please reduce your request rate")


def retry_budget() -> float:
    return float(os.environ.get(RETRY_ENV, "300"))


def is_transient_store_error(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, (ConnectionError, TimeoutError)) or names & set(_TRANSIENT_NAMES):
        return True
    return isinstance(exc, OSError) and any(t in str(exc) for t in _TRANSIENT_TEXT)


def endpoint_of(url: str, storage_options: dict) -> str:
    """Where a remote URL's requests go, for messages (never a credential)."""
    ep = (storage_options.get("client_kwargs") or {}).get("endpoint_url") or storage_options.get("endpoint_url")
    ep = ep or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    return ep or f"{scheme}:// (default endpoint)"


def _permanent(exc: BaseException, url: str, endpoint: str) -> BaseException | None:
    """A one-line StoreError for faults that no retry fixes, or None to re-raise as is."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and "bucket does not exist" in text:
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return StoreError(f"bucket {bucket!r} does not exist at {endpoint}: create it or fix the URL")
    if isinstance(exc, PermissionError):
        return StoreError(f"access to {url} denied by {endpoint} ({text.splitlines()[0] if text else 'no detail'}): "
                          "check the credentials (environment, AWS profile or secret block)")
    return None


def with_retries(fn: Callable[[], Any], url: str, endpoint: str, budget: float | None = None) -> Any:
    budget = retry_budget() if budget is None else budget
    t0, delay = time.monotonic(), 1.0
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient_store_error(e):
                raise (_permanent(e, url, endpoint) or e) from None
            waited = time.monotonic() - t0
            if waited + delay > budget:
                raise StoreUnavailable(
                    f"object store {endpoint} unreachable or failing for {waited:.0f} s ({type(e).__name__}) while "
                    f"reaching {url}: check that it is up; rerunning resumes from the finished shards "
                    f"({RETRY_ENV} sets how long to wait)") from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class RetryingFS:
    """A remote fsspec filesystem whose calls ride out transient faults (see the module doc)."""

    def __init__(self, fs, url: str, storage_options: dict):
        self._fs = fs
        self._url = url
        self._endpoint = endpoint_of(url, storage_options)

    def __getattr__(self, name: str):
        attr = getattr(self._fs, name)
        if name not in RETRIED or not callable(attr):
            return attr

        def call(*args, **kwargs):
            return with_retries(lambda: attr(*args, **kwargs), self._url, self._endpoint)

        return call

    def open(self, path: str, mode: str = "rb", **kwargs):
        if "r" in mode:  # a whole-object read, retried as one call
            data = self.cat_file(path)
            return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode(kwargs.get("encoding") or "utf-8"))
        return self._fs.open(path, mode, **kwargs)

    @property
    def unwrapped(self):
        return self._fs
