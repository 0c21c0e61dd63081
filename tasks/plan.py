"""Task of the plan flow: estimate a build (the calibration batch runs on the build's device)."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bergson_core.config import BuildConfig
from bergson_core.index.plan import plan_build

from .policy import gpu_task


@gpu_task("plan-build", cache_policy=NO_CACHE)  # the store and the clock decide: never a cached estimate
def estimate(config: BuildConfig) -> dict:
    """Documents, tokens, shards, store bytes, time and cost of the build `config` describes."""
    return plan_build(config)
