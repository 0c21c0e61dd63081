"""Hide the orchestration start-up behind model loading.

The embedded Prefect API takes several seconds to start, and so does importing torch and loading a
model. The CLI runs them side by side: a background thread validates the inputs and loads the model
and corpus into the per-process caches of bergson_core, while the main thread starts Prefect. The
flow's tasks then find everything loaded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable


class Background:
    """Run fn in a daemon thread; result() returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any]):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._value = fn()
        except BaseException as e:  # handed to the caller
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def quiet_prefect(verbose: bool) -> None:
    """Keep the terminal for progress bars and results unless --verbose; never show a traceback
    for a user error raised inside a task."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the first start creates the database; on 2 busy cores that can exceed Prefect's 20 s default
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    home = os.environ.get("PREFECT_HOME")
    if home:  # the embedded API's database lives here; sqlite will not create the folder
        os.makedirs(os.path.expanduser(home), exist_ok=True)


USER_ERRORS = ("UserError", "ConfigError", "InputError", "StoreError")


class DropUserErrors(logging.Filter):
    """The CLI prints a user error as one line; drop Prefect's copies (with tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bergson_core.errors import UserError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserError):
            return False
        names = USER_ERRORS + tuple(_subclass_names(UserError))  # IndexBusyError, StoreUnavailable, ...
        return not any(name in record.getMessage() for name in names)


def _subclass_names(cls) -> set[str]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub.__name__} | _subclass_names(sub)
    return out


def _filter_prefect_logs() -> None:
    """Filter at every handler Prefect configured, so records of any logger are covered."""
    flt = DropUserErrors()
    loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)]
    for logger in [logging.getLogger(), *loggers]:
        for handler in getattr(logger, "handlers", []):
            if flt not in handler.filters:
                handler.addFilter(flt)


def start_prefect() -> None:
    """Start the embedded API now (no-op when PREFECT_API_URL points at a server)."""
    import prefect  # noqa: F401  (import cost is part of what we overlap)
    from prefect.settings import PREFECT_API_URL

    _filter_prefect_logs()
    if PREFECT_API_URL.value():
        return
    watched_server_class()().start()


def watched_server_class():
    """Prefect's embedded API server, whose process is watched from the moment it is spawned.

    Prefect keeps one server per port in a class-level table, so once this instance exists every
    later `SubprocessASGIServer()` of this process (the flow's client) gets it back."""
    from prefect.server.api.server import SubprocessASGIServer

    class WatchedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            process = super()._run_uvicorn_command()
            watch_parent(process.pid)
            return process

    return WatchedServer


# Runs in a small separate process: when the CLI process is gone (exit, crash or SIGKILL, which
# runs no atexit handler), kill the embedded API server it started, then exit; exit too when the
# server is gone first.
_WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while alive(server):
    if os.getppid() != parent or not alive(parent):
        try:
            os.kill(server, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""


def watch_parent(server_pid: int) -> None:
    """Start the watchdog that ends the embedded API server with this process."""
    import subprocess
    import sys

    _watchdogs.append(subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the CLI's process group: a Ctrl-C there reaches the CLI
    ))


_watchdogs: list = []  # keeps the Popen objects alive (no "still running" warning at exit)


def overlapped(preload: Callable[[], Any]) -> Any:
    """Run `preload` (validation, model and data loading) while Prefect starts; a user error from
    the preload is raised at once, without waiting for the orchestrator."""
    server = Background(start_prefect)
    time.sleep(0.05)  # let the server thread spawn its subprocess before torch's import holds the GIL
    value = Background(preload).result()
    server.result()
    return value
