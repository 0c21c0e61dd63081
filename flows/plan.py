"""Recipe: the plan of a build, before it runs (`bergson plan`, `bergson build --dry-run`).

estimate (validation, tokens, exact store bytes, a timed calibration batch) -> markdown artifact, so
a dashboard user sees the bill before starting the build.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config import BuildConfig
from tasks import artifacts
from tasks.plan import estimate


@flow(name="plan-build", log_prints=True)
def plan(config: BuildConfig) -> dict:
    result = estimate(config)
    key = artifacts.artifact_key("plan", config.spec_hash())
    artifacts.markdown(key, result["markdown"], f"Plan of the build of {config.index}")
    return {k: v for k, v in result.items() if k != "markdown"}


def render(result: dict) -> None:
    from rich.table import Table

    from .render import console

    t = Table(title=f"build plan for {result['index']}")
    t.add_column("what")
    t.add_column("estimate", justify="right")
    cost = f"{result['cost']:,.2f}" if result["cost"] is not None else "(give --price-per-hour)"
    for what, value in (("documents", f"{result['documents']:,}"),
                        ("tokens", f"{result['tokens']:,}" + ("" if result["tokens_exact"] else " (sampled)")),
                        ("shards", f"{result['shards']:,} of {result['shards_total']:,}"),
                        ("store bytes", f"{result['bytes']:,}"),
                        ("time per shard", f"{result['seconds_per_shard']:,.1f} s"),
                        ("compute time", f"{result['seconds']:,.1f} s on {result['device']}"),
                        ("cost", cost)):
        t.add_row(what, value)
    console.print(t)
