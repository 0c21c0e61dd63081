"""Recipe: fit a preconditioner over a gradient index.

plan -> (queries: query gradients) -> map statistics over the shards (tag gpu) -> reduce -> fit
     -> EK-FAC only: map the eigenvalue pass in the KFAC eigenbasis -> reduce -> fit
     -> INDEX/precond/<name>/ + a markdown summary artifact.
Partials, totals and fits already in the store are reused, so a rerun only does what is missing.
"""

from __future__ import annotations

import time

from prefect import flow, unmapped

from bergson_core.config.curvature import FitConfig
from tasks import artifacts, curvature, progress
from tasks.score import query_gradients

from .mapping import map_until_stored
from .runners import task_runner


@flow(name="fit-preconditioner", log_prints=True, task_runner=task_runner())
def fit(config: FitConfig) -> dict:
    t0 = time.perf_counter()
    config.source()  # impossible option pairs fail before any work
    if config.queries:
        query_gradients(config.query_score_config())
    plan = curvature.plan(config)
    key = artifacts.artifact_key("fit", plan["spec_hash"], plan["name"])
    passes, totals = [], {}
    for p in plan["passes"]:
        passes.append(_map(config, p, key))
        totals[p["kind"]] = curvature.reduce(config, p)
    name = plan["name"]
    if config.strategy == "ekfac":
        basis = f"{name}-kfac-basis"
        curvature.fit(config, "kfac", {"kfac": totals.pop("kfac")}, basis)
        p = curvature.plan_lambda(config, plan, basis)
        passes.append(_map(config, p, key))
        result = curvature.fit(config, "ekfac", {"ekfac-lambda": curvature.reduce(config, p)}, name, basis)
    else:
        result = curvature.fit(config, config.strategy, totals, name)
    summary = _summary(config, plan, passes, result, time.perf_counter() - t0)
    artifacts.markdown(key + "-summary", summary.pop("markdown"), f"Preconditioner {name} of {config.index}")
    return summary


def _map(config: FitConfig, p: dict, key: str) -> dict:
    """Partial statistics of every shard of pass p; a cached result whose file was deleted since is
    recomputed, bypassing the cache."""
    from bergson_core.curvature.run import has_partial

    shards = [tuple(s) for s in p["shards"]]
    todo = [s for s in shards if not has_partial(config, p, s[0])]  # finished shards are not even scheduled
    tracker = artifacts.Progress(artifacts.artifact_key(key, p["kind"], "progress"), len(todo),
                                 f"{p['kind']} statistics of {config.index}")
    progress.start(sum(stop - start for _, start, stop in todo), f"{p['kind']} statistics", config.progress)
    try:
        results = map_until_stored(
            curvature.stats, todo, shards,
            lambda task, items: task.map(unmapped(config), unmapped(p), shard=[s[0] for s in items],
                                         start=[s[1] for s in items], stop=[s[2] for s in items]),
            lambda items: [s for s in items if not has_partial(config, p, s[0])],
            incomplete=f"{p['kind']} statistics of {config.index} are still incomplete: rerun `bergson fit`",
            tracker=tracker)
    finally:
        progress.close()
    computed = [r for r in {r["shard"]: r for r in results}.values() if not r.get("skipped")]  # refreshed ones win
    return {"kind": p["kind"], "dir": p["dir"], "source": p["source"], "shards": len(shards),
            "computed": len(computed), "seconds": sum(r.get("seconds", 0.0) for r in computed)}


def _summary(config: FitConfig, plan: dict, passes: list[dict], result: dict, seconds: float) -> dict:
    out = {"index": config.index, "preconditioner": plan["name"], "strategy": config.strategy,
           "source": plan["source"], "space": plan["space"], "documents": plan["documents"],
           "fingerprint": result["fingerprint"], "refitted": not result.get("skipped"),
           "mix_lambda": result.get("mix_lambda"), "passes": passes, "seconds": seconds}
    rows = [f"| {p['kind']} | {p['source']} | {p['shards']} | {p['computed']} | {p['seconds']:.1f} | `stats/{p['dir']}` |"
            for p in passes]
    space = plan["space"]
    where = f"p={space['projection_dim']}" if space["projection_dim"] else "full gradients"
    out["markdown"] = (
        f"# Preconditioner `{plan['name']}` ({config.strategy})\n\n"
        f"Index `{config.index}`, {plan['documents']} documents, {where}, statistics from {plan['source']}.\n\n"
        "| pass | source | shards | computed now | seconds | folder |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nFit `precond/{plan['name']}`: fingerprint {result['fingerprint']}, "
        f"{'refitted' if out['refitted'] else 'reused'}"
        + (f", mix lambda {out['mix_lambda']:.4g}" if out["mix_lambda"] is not None else "")
        + f". Damping {config.damping} ({config.damping_mode}), power {config.power}. Total {seconds:.1f} s.\n"
    )
    return out
