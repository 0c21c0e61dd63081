"""Model replicas (--devices): shards are byte-identical whatever the number of replicas, CPU
replicas share the weights, and a bad --devices value is a one-line user error."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bergson_core.config import BuildConfig
from bergson_core.errors import ConfigError
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.model.replicas import parse_devices, replica_pool


def _build(workspace, index, devices: str) -> dict[str, bytes]:
    cfg = BuildConfig(index=str(index), model=workspace["model"], dataset=workspace["corpus"], shard_size=5,
                      batch_tokens=24, devices=devices, progress=False)
    plan = prepare_build(cfg)
    with ThreadPoolExecutor(4) as pool:  # as the flow's thread runner: shards race for replicas
        list(pool.map(lambda s: build_shard(cfg, *s), plan.shards))
    grads = os.path.join(index, "grads")
    return {f: open(os.path.join(grads, f), "rb").read() for f in sorted(os.listdir(grads))}


def test_shards_identical_for_one_and_two_replicas(workspace, tmp_path):
    threads = torch.get_num_threads()
    try:
        one = _build(workspace, tmp_path / "one", "cpu:1")
        two = _build(workspace, tmp_path / "two", "cpu:2")
    finally:
        torch.set_num_threads(threads)
    assert len(one) == 10 and one == two


def test_cpu_replicas_share_the_weights(workspace):
    cfg = BuildConfig(index="unused", model=workspace["model"], dataset=workspace["corpus"], devices="cpu:3")
    threads = torch.get_num_threads()
    try:
        pool = replica_pool(cfg)
    finally:
        torch.set_num_threads(threads)
    models = [pool._free.get() for _ in range(3)]
    for m in models:
        pool._free.put(m)
    assert len({id(m.model) for m in models}) == 3  # own module trees (own hooks)
    ptrs = [{p.data_ptr() for p in m.model.parameters()} for m in models]
    assert ptrs[0] == ptrs[1] == ptrs[2]


@pytest.mark.parametrize("value, needle", [("cpu:0", "cpu:N"), ("cpu:x", "cpu:N"), ("tpu", "not a device"),
                                           ("cuda:7", "not available")])
def test_bad_devices(value, needle):
    if value == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=needle):
        parse_devices(value, torch.device("cpu"))


def test_auto_devices_on_cpu():
    devices = parse_devices("auto", torch.device("cpu"))
    assert devices and all(d.type == "cpu" for d in devices) and len(devices) <= 4
