"""`bergson query` latency once the index is open: exact streaming over every shard vs a FAISS
search, for one prompt, on synthetic indexes of 20k and 200k rows; FAISS build time; recall@10 of
each FAISS preset against exact (50 prompts).

Rows have the shape of projected gradients (a decaying spectrum of RANK directions plus small
isotropic noise), stored float16 like `bergson build`'s default. Query gradients are not computed
(the model pass is the same for both paths); the prompt row is given.

    PYTHONPATH=. .venv/bin/python benchmarks/query_latency.py            # 20k and 200k rows, width 256, 1 thread
    PYTHONPATH=. .venv/bin/python benchmarks/query_latency.py --rows 20000 --width 1024
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np

from bergson_core.config.query import QueryConfig
from bergson_core.index.store import Index
from bergson_core.scoring import faiss_index as fx
from bergson_core.scoring.score import prepare_queries, score_index

RANK = 32


def presets(rows: int) -> list[str]:
    """The factories the README recommends: exact Flat, IVF with ~sqrt(N) lists, IVF + 16-byte PQ codes."""
    lists = 1 << int(round(np.log2(np.sqrt(rows))))
    return ["Flat", f"IVF{lists},Flat", f"IVF{lists},PQ16"]


def write_index(root: str, rows: int, width: int, shard_size: int, seed: int = 0) -> tuple[Index, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = (rng.standard_normal((RANK, width)) * (0.9 ** np.arange(RANK))[:, None]).astype(np.float32)
    index = Index(root)
    starts = list(range(0, rows, shard_size))
    index.write_meta({"num_shards": len(starts), "row_width": width, "grad_dtype": "float16",
                      "shard_size": shard_size, "spec_hash": "benchmark", "dataset": {"rows": rows}})
    for i, start in enumerate(starts):
        n = min(shard_size, rows - start)
        block = rng.standard_normal((n, RANK)).astype(np.float32) @ basis + 0.05 * rng.standard_normal((n, width))
        index.write_shard(i, start, [str(start + j) for j in range(n)], [1] * n, block.astype(np.float16), "float16")
    queries = rng.standard_normal((50, RANK)).astype(np.float32) @ basis
    return index, queries


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(rows: int, width: int, shard_size: int, nprobe: int, repeats: int) -> list[dict]:
    root = tempfile.mkdtemp(prefix="query-latency-")
    try:
        index, queries = write_index(root, rows, width, shard_size)
        one = queries[:1]
        exact_s = median_seconds(lambda: score_index(index, one, "cosine", "individual", 10, 4096), repeats)
        _, exact_docs = score_index(index, queries, "cosine", "individual", 10, 4096)
        out = [{"rows": rows, "search": "exact streaming", "build_s": 0.0, "latency_ms": exact_s * 1e3, "recall": 1.0}]
        qt = prepare_queries(queries, "cosine", "individual").numpy()
        for factory in presets(rows):
            cfg = QueryConfig(index=root, faiss=factory, nprobe=nprobe)
            t0 = time.perf_counter()
            built = fx.build_in_process(cfg)
            build_s = time.perf_counter() - t0
            _, key, _ = fx.faiss_source(cfg)
            searcher = fx.FaissSearcher(built["faiss"], key, {}, nprobe)
            latency = median_seconds(lambda: searcher.search(qt[:1], 10), repeats)
            _, docs = searcher.search(qt, 10)
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(docs, exact_docs)]))
            out.append({"rows": rows, "search": f"FAISS {factory}", "build_s": build_s, "latency_ms": latency * 1e3,
                        "recall": rec})
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--width", type=int, default=256, help="Numbers per row (one module at p=16 is 256).")
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (1: a shared machine's "
                   "spinning OpenMP threads make timings meaningless).")
    args = p.parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"{'rows':>8} {'search':<26} {'build s':>8} {'1 prompt ms':>12} {'vs exact':>9} {'recall@10':>10}")
    for rows in args.rows:
        results = run(rows, args.width, args.shard_size, args.nprobe, args.repeats)
        base = results[0]["latency_ms"]
        for r in results:
            print(f"{r['rows']:>8} {r['search']:<26} {r['build_s']:>8.1f} {r['latency_ms']:>12.2f} "
                  f"{base / r['latency_ms']:>8.1f}x {r['recall']:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
