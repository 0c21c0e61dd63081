"""CPU model replicas against intra-op threads: which uses the cores of a node better?

Extracts the same documents (p = 16, 2,048-token batches) with one replica using every core's
torch thread, and with one single-thread replica per core (weights shared, documents split), on
GPT-NeoX models shaped like the peers' job (`../shared/peers`: small h64 x 2, medium h256 x 4,
vocabulary 512), built from configs. Prints wall seconds of each and their ratio, alternating the
two, in one run.

    .venv/bin/python benchmarks/replicas.py [--docs 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch

from bergson_core.config import GradientOptions
from bergson_core.data.corpus import Doc
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.model.loading import LoadedModel
from bergson_core.model.replicas import _cpu_replica, usable_cores
from bergson_core.model.tiny import tiny_model

SHAPES = {"small (h64 x 2)": dict(hidden=64, layers=2, heads=4), "medium (h256 x 4)": dict(hidden=256, layers=4, heads=8)}


class _Tok:
    pad_token_id = 0


def docs(n: int) -> list[Doc]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ids = rng.integers(3, 512, size=int(rng.integers(40, 512))).tolist()
        out.append(Doc(i, str(i), ids, list(ids)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = usable_cores()
    opts = GradientOptions(projection_dim=16)
    corpus = docs(args.docs)
    parts = [corpus[i::cores] for i in range(cores)]
    print(f"{args.docs} documents, {sum(len(d.input_ids) for d in corpus):,} tokens, {cores} cores")
    print("| model | 1 replica x %d threads (s) | %d replicas x 1 thread (s) | speed-up |\n|---|---|---|---|" % (cores, cores))
    for name, shape in SHAPES.items():
        model = tiny_model("gpt_neox", 512, max_positions=512, **shape)
        model.requires_grad_(False)
        replicas = [model] + [_cpu_replica(model) for _ in range(cores - 1)]
        loaded = [LoadedModel(m, _Tok(), torch.device("cpu"), torch.float32, threading.Lock()) for m in replicas]
        modules = tracked_modules(loaded[0], opts)
        compute_gradients(loaded[0], modules, corpus[:8], opts, 2048)  # warm-up
        one, many = [], []
        for _ in range(args.repeats):
            torch.set_num_threads(cores)
            t0 = time.perf_counter()
            compute_gradients(loaded[0], modules, corpus, opts, 2048)
            one.append(time.perf_counter() - t0)
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            threads = [threading.Thread(target=compute_gradients, args=(m, modules, p, opts, 2048))
                       for m, p in zip(loaded, parts)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            many.append(time.perf_counter() - t0)
        a, b = statistics.median(one), statistics.median(many)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
