"""Map a task over shards (or runs) until their outputs are in the store.

The fan-out tasks (extract-shard, stats-shard, retrain-subset) are cached on what they store, so a
rerun skips finished work. But a cached result only says the work was done once: when its files
were deleted since, the cache would hand back a result whose output is gone. `map_until_stored`
maps the task, then redoes, bypassing the cache, every item whose stored output is missing, and
refuses to go on while any still is.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from prefect.futures import as_completed

from bergson_core.errors import StoreError


def map_until_stored(
    task,
    todo: Sequence,
    every: Sequence,
    submit: Callable[[Any, list], list],
    missing: Callable[[list], list],
    *,
    incomplete: str,
    tracker=None,
    cached_as_skipped: bool = False,
) -> list[dict]:
    """Run `task` over the items `todo`, then redo without the cache those of `every` whose output
    is not in the store; raise StoreError(incomplete) when some still are not.

    submit(task, items) maps the task over items (one future each); missing(items) lists the items
    whose stored output is absent; tracker (an artifacts.Progress) steps once per item of the first
    pass. Returns the results in completion order, a redone item's after its stale one (key them by
    item so the redone one wins); with cached_as_skipped a result served from the cache is marked
    {"skipped": True} (finished by an earlier run: nothing computed now).
    """
    results = _gather(submit(task, list(todo)), tracker, cached_as_skipped) if todo else []
    lost = missing(list(every))
    if lost:  # a cached result whose files were deleted since: redo it, bypassing the cache
        results += _gather(submit(task.with_options(refresh_cache=True), lost), None, cached_as_skipped)
    if missing(list(every)):
        raise StoreError(incomplete)
    return results


def _gather(futures, tracker, cached_as_skipped: bool) -> list[dict]:
    out = []
    for fut in as_completed(futures):
        result = fut.result()
        if cached_as_skipped and fut.state.name == "Cached":
            result = {**result, "skipped": True}
        out.append(result)
        if tracker:
            tracker.step()
    return out
