"""flows/mapping.py: a cached task whose stored file was deleted since is redone, bypassing the
cache; an item that the task never stores is refused."""

from __future__ import annotations

import os

import pytest
from prefect import flow, task

from bergson_core.errors import StoreError
from flows.mapping import map_until_stored

CALLS: list[int] = []


@task(cache_key_fn=lambda ctx, params: f"map-test-{params['folder']}-{params['item']}", persist_result=True,
      result_serializer="json")
def write_item(folder: str, item: int, store: bool = True) -> dict:
    CALLS.append(item)
    if store:
        open(os.path.join(folder, f"{item}.txt"), "w").write(str(item))
    return {"item": item}


@flow
def fan_out(folder: str, store: bool = True) -> list[dict]:
    items = [0, 1, 2]
    return map_until_stored(
        write_item, items, items,
        lambda t, todo: t.map(folder, todo, store),
        lambda todo: [i for i in todo if not os.path.exists(os.path.join(folder, f"{i}.txt"))],
        incomplete="still missing", cached_as_skipped=True)


def test_deleted_output_is_redone_without_the_cache(prefect_api, tmp_path):
    folder = str(tmp_path)
    CALLS.clear()
    first = fan_out(folder)
    assert sorted(CALLS) == [0, 1, 2] and not any(r.get("skipped") for r in first)
    CALLS.clear()
    again = fan_out(folder)  # every result from the cache
    assert CALLS == [] and all(r["skipped"] for r in again)
    os.remove(os.path.join(folder, "1.txt"))
    CALLS.clear()
    redone = fan_out(folder)
    assert CALLS == [1] and os.path.exists(os.path.join(folder, "1.txt"))
    assert [r["item"] for r in redone if not r.get("skipped")] == [1]


def test_an_item_never_stored_is_refused(prefect_api, tmp_path):
    with pytest.raises(StoreError, match="still missing"):
        fan_out(str(tmp_path / "nowhere-else"), store=False)
