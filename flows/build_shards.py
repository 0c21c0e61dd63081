"""Recipe: one block of a fanned-out build (`bergson build --fan-out workers`, flows/fanout.py).

check index.json (the parent wrote it) -> extract the block's shards (fan-out, tag gpu) -> write the
block's summary of manifests, so the parent's completion check reads one object for the whole block.
"""

from __future__ import annotations

from functools import partial

from prefect import flow

from bergson_core.config import BuildConfig
from tasks.build import extract_shard, plan_block

from .build import _extract
from .mapping import map_until_stored
from .runners import task_runner

RUN_KEYS = ("skipped", "seconds", "recomputed")  # what a task adds to a shard's manifest


@flow(name="build-shards", log_prints=True, task_runner=task_runner())
def build_shards(config: BuildConfig, shards: list[int], redo: list[int] | None = None) -> dict:
    from bergson_core.index.store import Index

    config = config.model_copy(update={"overwrite": False, "fan_out": "tasks"})  # the parent owns index.json
    index = Index(config.index, config.storage_options)
    planned = plan_block(config, shards)
    again = set(redo or ())  # found corrupt by the parent: a cached task result would skip them
    stored = dict(submit=partial(_extract, config), missing=partial(_missing, index),
                  incomplete=f"block {shards[0]}..{shards[-1]} of {config.index} is incomplete: the parent retries it")
    done = map_until_stored(extract_shard.with_options(refresh_cache=True), [s for s in planned if s[0] in again],
                            [], **stored) if again else []
    done += map_until_stored(extract_shard, [s for s in planned if s[0] not in again], planned, **stored)
    results = {r["shard"]: r for r in done}
    index.write_block_summary([{k: v for k, v in r.items() if k not in RUN_KEYS} for r in results.values()])
    computed = [r for r in results.values() if not r.get("skipped")]
    return {"shards": len(results), "shards_computed": len(computed),
            "tokens": sum(r.get("tokens", 0) for r in computed), "seconds": sum(r.get("seconds", 0.0) for r in computed)}


def _missing(index, shards) -> list:
    """The block's shards without a manifest: one request each (a block is small; a listing is the whole index)."""
    return [s for s in shards if not index.has_shard(s[0])]
