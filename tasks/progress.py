"""Terminal progress shared between a flow and the tasks it runs in the same process."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_bar = None


def start(total: int, desc: str, enabled: bool = True, unit: str = "doc"):
    global _bar
    from tqdm.auto import tqdm

    with _lock:
        _bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
    return _bar


def advance(n: int) -> None:
    with _lock:
        if _bar is not None:
            _bar.update(n)


def close() -> None:
    global _bar
    with _lock:
        if _bar is not None:
            _bar.close()
        _bar = None
