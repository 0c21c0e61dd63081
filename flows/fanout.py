"""Fan one build out onto the work pool (`bergson build --fan-out workers --blocks N`).

The missing shards are split into blocks of consecutive shards, one child run of the `build-shards`
deployment (flows/build_shards.py) each, all started at once (run_deployment with timeout=0), so
every worker of the pool takes blocks in parallel; the `gpu` limit still caps their shard tasks.
The parent then polls its children: a failed, crashed or cancelled block is started again with
its shards still missing (at most `block_retries` times); the build ends when one listing of the
store finds every shard. Children carry a tag naming the index and spec, so a rerun of a killed
parent adopts the children that are still scheduled or running instead of computing their shards twice.
"""

from __future__ import annotations

import os
import time

from bergson_core.config import BuildConfig
from bergson_core.errors import ConfigError, StoreError

DEPLOYMENT = "build-shards/build-shards"
ACTIVE = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]
PAGE = 200  # flow runs per API read (the server's default limit)


def poll_seconds() -> float:
    return float(os.environ.get("BERGSON_FANOUT_POLL_SECONDS", "2"))


def build_tag(config: BuildConfig) -> str:
    """The tag of every child run of one index and spec: how a rerun finds them."""
    from tasks.policy import cache_key

    return "bergson-build-" + cache_key(config.index.rstrip("/"), config.spec_hash())[:12]


def split(items: list, blocks: int) -> list[list]:
    """items in at most `blocks` runs of consecutive items, sizes differing by at most one."""
    n = min(blocks, len(items))
    out, at = [], 0
    for b in range(n):
        size = len(items) // n + (b < len(items) % n)
        out.append(items[at:at + size])
        at += size
    return out


def check_server() -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError("--fan-out workers needs a Prefect server with the bergson deployments: start one, "
                          "export PREFECT_API_URL and run `bergson deploy`")


def fan_out(config: BuildConfig, plan: dict) -> dict:
    """Run the plan's missing shards as child runs; return what happened to the blocks."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    check_server()
    tag, bad = build_tag(config), {int(k) for k in plan.get("bad", {})}
    todo = [s[0] for s in plan["missing"]]
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            raise ConfigError(f"--fan-out workers needs the {DEPLOYMENT} deployment: run `bergson deploy`") from None
        children = _adopt(client, tag)
        adopted = {i for c in children.values() for i in c["shards"]}
        for block in split([i for i in todo if i not in adopted], config.blocks):
            children[_start(config, block, bad, tag)] = {"shards": block, "attempt": 0}
        counts = _track(client, config, children, tag, bad)
    return counts


def _adopt(client, tag: str) -> dict:
    """Children of an earlier parent of this build that are still scheduled or running."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )

    flt = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE)))
    found, offset = {}, 0
    while page := client.read_flow_runs(flow_run_filter=flt, limit=PAGE, offset=offset):
        found.update({r.id: {"shards": list(r.parameters["shards"]), "attempt": 0, "adopted": True} for r in page})
        offset += len(page)
    return found


def _start(config: BuildConfig, shards: list[int], bad: set[int], tag: str):
    from prefect.deployments import run_deployment

    run = run_deployment(DEPLOYMENT, timeout=0, tags=[tag], flow_run_name=f"block-{shards[0]}-{shards[-1]}",
                         parameters={"config": config.model_dump(mode="json"), "shards": shards,
                                     "redo": sorted(bad & set(shards))})
    return run.id


def _track(client, config: BuildConfig, children: dict, tag: str, bad: set[int]) -> dict:
    """Poll the children until none is active; start a failed block again while retries are left."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    failed, retried = [], 0
    while active := [rid for rid, c in children.items() if "state" not in c]:
        time.sleep(poll_seconds())
        for at in range(0, len(active), PAGE):
            ids = FlowRunFilter(id=FlowRunFilterId(any_=active[at:at + PAGE]))
            for run in client.read_flow_runs(flow_run_filter=ids, limit=PAGE):
                if not run.state or not run.state.is_final():
                    continue
                child = children[run.id]
                child.update(state=run.state.name, seconds=run.total_run_time.total_seconds())
                if run.state.is_completed():
                    continue
                left = _missing(config, child["shards"])
                if left and child["attempt"] < config.block_retries:
                    print(f"block run {run.name} ended {run.state.name}: starting its {len(left)} missing shards again")
                    children[_start(config, left, bad, tag)] = {"shards": left, "attempt": child["attempt"] + 1}
                    retried += 1
                elif left:
                    failed.append(f"{run.name} ({run.state.name})")
    if failed:
        raise StoreError(f"blocks of {config.index} failed after {config.block_retries} retries: {', '.join(failed)}; "
                         "rerun the build to retry them")
    return {"blocks": len(children), "adopted": sum(1 for c in children.values() if c.get("adopted")),
            "retried": retried, "block_seconds": sum(c.get("seconds", 0.0) for c in children.values())}


def _missing(config: BuildConfig, shards: list[int]) -> list[int]:
    from bergson_core.index.store import Index

    _, listed = Index(config.index, config.storage_options).listing()
    return [i for i in shards if i not in listed]
