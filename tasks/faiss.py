"""Tasks of the FAISS build: plan, train on a sample, add one block of shards, merge."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bergson_core.config.query import QueryConfig
from bergson_core.scoring import faiss_index as fx

from .policy import step_task


@step_task("faiss-plan", cache_policy=NO_CACHE)
def plan(config: QueryConfig) -> dict:
    return fx.plan(config)


@step_task("faiss-train", cache_policy=NO_CACHE)  # the store's manifest decides reuse, not Prefect
def train(config: QueryConfig, plan: dict) -> dict:
    index, _, doc_transform = fx.faiss_source(config)
    return fx.train(index, plan["url"], config.faiss, config.metric, config.faiss_train_rows, doc_transform)


@step_task("faiss-add-block", cache_policy=NO_CACHE)
def add_block(config: QueryConfig, plan: dict, block: int) -> dict:
    index, _, doc_transform = fx.faiss_source(config)
    return fx.add_block(index, plan["url"], block, plan["blocks"][block], config.metric, doc_transform)


@step_task("faiss-merge", cache_policy=NO_CACHE)
def merge(config: QueryConfig, plan: dict) -> dict:
    index, _, _ = fx.faiss_source(config)
    return fx.merge(index, plan["url"], len(plan["blocks"]), plan["key"])
