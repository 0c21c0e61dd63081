"""One model replica per device, so that every device of a machine computes shards at once.

`--devices` names them: `auto` (every visible CUDA device when the model's device is CUDA, else
`cpu:N` with one replica per core, at most MAX_AUTO_CPU), an explicit list such as `cuda:0,cuda:1`,
or `cpu:N`. A shard task takes a free replica from the pool for the whole shard and gives it back.

On CPU the replicas share the parameter tensors (a new module tree around the same weights, which
are frozen), so N replicas cost N batches of activations but one copy of the weights; torch's
intra-op threads are split between them (cores // N each). For small and medium models this is
much faster than one replica with several threads, whose threads spend their time waiting on each
other, and on a loaded machine many times faster. A shard is computed by one replica with the same
batches whatever the count, so shards are byte-identical for any --devices on one device type.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import threading

import torch

from ..errors import ConfigError
from .loading import LoadedModel, load_model

MAX_AUTO_CPU = 4

_pools: dict[tuple, "ReplicaPool"] = {}
_pools_lock = threading.Lock()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_devices(spec: str, model_device: torch.device) -> list[torch.device]:
    """The replica devices named by a --devices value (raises ConfigError with the fix)."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        if model_device.type == "cuda":
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())] or [model_device]
        return [torch.device("cpu")] * min(usable_cores(), MAX_AUTO_CPU)
    if spec.startswith("cpu:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--devices {spec}: cpu:N needs a whole number N >= 1, e.g. cpu:2")
        return [torch.device("cpu")] * n
    out = []
    for part in spec.split(","):
        try:
            dev = torch.device(part.strip())
        except RuntimeError:
            raise ConfigError(f"--devices {spec}: {part!r} is not a device; use auto, cpu:N or cuda:0,cuda:1") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(f"--devices {spec}: {dev} is not available here: use auto or cpu:N")
        out.append(dev)
    if len({str(d) for d in out}) != len(out) and any(d.type == "cuda" for d in out):
        raise ConfigError(f"--devices {spec}: a CUDA device is named twice")
    return out


def _cpu_replica(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree (own hooks) around the same frozen parameter and buffer tensors."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class ReplicaPool:
    """Replicas of one loaded model; `take()` lends a free one for the duration of a `with`."""

    def __init__(self, base: LoadedModel, devices: list[torch.device]):
        self.devices = devices
        self._free: queue.Queue[LoadedModel] = queue.Queue()
        cpu = [d for d in devices if d.type == "cpu"]
        if cpu and len(cpu) == len(devices):  # split the cores between the CPU replicas
            torch.set_num_threads(max(1, usable_cores() // len(cpu)))
        for i, dev in enumerate(devices):
            if i == 0 and _same(dev, base.device):
                model = base.model
            elif dev.type == "cpu" and base.device.type == "cpu":
                model = _cpu_replica(base.model)
            else:
                model = copy.deepcopy(base.model).to(dev)
            self._free.put(LoadedModel(model, base.tokenizer, dev, base.dtype, threading.Lock()))

    def __len__(self) -> int:
        return len(self.devices)

    @contextlib.contextmanager
    def take(self):
        replica = self._free.get()
        try:
            yield replica
        finally:
            self._free.put(replica)


def replica_pool(cfg) -> ReplicaPool:
    """The process-wide pool for the model and --devices of `cfg` (made on first use)."""
    base = load_model(cfg)
    key = (id(base.model), cfg.devices)
    with _pools_lock:
        if key not in _pools:
            # a --device-map model is spread over the devices already: one replica, never copied
            dispatched = getattr(base.model, "hf_device_map", None) is not None and getattr(cfg, "device_map", None)
            devices = [base.device] if dispatched else parse_devices(cfg.devices, base.device)
            _pools[key] = ReplicaPool(base, devices)
        return _pools[key]
