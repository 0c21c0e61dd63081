"""Scoring throughput of a stored index against a plain in-memory matmul of the same matrices.

A synthetic index (random float16 rows, several shards, written with bergson_core.index.store.Index in a
temporary folder) is scored with bergson_core.scoring.score.score_index, and the same corpus, held in memory
as one float32 torch tensor, is scored with `q @ C.T` + `topk` in blocks of the same size. Times are
interleaved (A, B, A, B, ...; the order rotates) and the median over repeats is reported.

  score_index inner    streaming top-k from the memory-mapped shards, inner product
  score_index cosine   the same with cosine (each corpus block is unit-normalised on the fly)
  matmul in memory     baseline: float32 corpus already in RAM, one matmul + torch.topk per block
                       (block-wise too, so both do the same number of flops and keep k per block)
  f16 in memory        the same from a float16 copy in RAM, each block converted to float32 first:
                       separates the cost of decoding float16 from the cost of the store and top-k
  first score_index    the first call in the process, which also verifies every shard's sha256
  (--before)           score_index as it was before the top-k pre-filter and the reused decode
                       buffer (score_index_before: a full stable sort of k + n entries per row and
                       block, a fresh np.array per float16 block), to compare in the same run; its
                       top-k scores and documents are checked bitwise equal to score_index's

How to read it: rows/s = corpus rows scored per second (all queries at once). The ratio is
score_index / in-memory matmul; 1.0 means storage, float16 decoding and top-k merging cost nothing.

    .venv/bin/python benchmarks/scoring.py            # 50,000 x 4,096 in 5 shards, 32 queries
    .venv/bin/python benchmarks/scoring.py --quick    # 10,000 x 4,096 in 3 shards
    .venv/bin/python benchmarks/scoring.py --threads 1 --before   # as in the README
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

from bergson_core.index.store import Index
from bergson_core.scoring.score import score_index


def write_index(root: str, rows: int, width: int, shards: int, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    index = Index(root)
    per = -(-rows // shards)
    starts = list(range(0, rows, per))
    index.write_meta({"num_shards": len(starts), "row_width": width, "grad_dtype": "float16",
                      "shard_size": per, "spec_hash": "benchmark"})
    for i, start in enumerate(starts):
        n = min(per, rows - start)
        block = rng.standard_normal((n, width), dtype=np.float32).astype(np.float16)
        index.write_shard(i, start, [str(start + j) for j in range(n)], [1] * n, block, "float16")
    return index


def load_corpus(index: Index) -> torch.Tensor:
    """The whole corpus as one float32 tensor (the baseline's input; decoding not timed)."""
    from bergson_core.index.store import grad_matrix

    parts = [np.asarray(grad_matrix(t), dtype=np.float32) for _, t in index.iter_shards()]
    return torch.from_numpy(np.concatenate(parts))


def matmul_topk(q: torch.Tensor, corpus: torch.Tensor, k: int, block: int):
    """Baseline: blockwise q @ C^T with a running top-k (torch.topk, then one merge per block)."""
    best_s = torch.full((q.shape[0], 0), -float("inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for lo in range(0, corpus.shape[0], block):
        s = q @ corpus[lo : lo + block].float().T  # [Q, n]; .float() is a no-op for float32
        s, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        cand_s, cand_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + lo], 1)
        best_s, sel = torch.topk(cand_s, min(k, cand_s.shape[1]), dim=1)
        best_i = cand_i.gather(1, sel)
    return best_s, best_i


class TopKBefore:
    """bergson_core.scoring.score.TopK.add as it was: every block merged by a full stable sort."""

    def __init__(self, rows: int, k: int):
        self.k = k
        self.scores = torch.full((rows, 0), -float("inf"))
        self.docs = torch.zeros((rows, 0), dtype=torch.long)

    def add(self, scores: torch.Tensor, first_doc: int) -> None:
        docs = torch.arange(first_doc, first_doc + scores.shape[1]).expand_as(scores)
        s = torch.cat([self.scores, scores], dim=1)
        d = torch.cat([self.docs, docs], dim=1)
        by_doc = torch.argsort(d, dim=1, stable=True)
        s, d = s.gather(1, by_doc), d.gather(1, by_doc)
        by_score = torch.argsort(s, dim=1, descending=True, stable=True)[:, : self.k]
        self.scores, self.docs = s.gather(1, by_score), d.gather(1, by_score)


def score_index_before(index: Index, q: np.ndarray, metric: str, aggregate: str, top_k: int, block_rows: int):
    """score_index's loop as it was (no transforms): TopKBefore, and a fresh float32 np.array per block."""
    from bergson_core.index.store import grad_matrix
    from bergson_core.scoring.score import _unit, prepare_queries

    qt = prepare_queries(q, metric, aggregate)
    top = TopKBefore(1 if aggregate in ("mean", "max") else qt.shape[0], top_k)
    for manifest in index.manifests():
        grads = grad_matrix(index.open_shard(manifest["shard"], manifest))
        for lo in range(0, grads.shape[0], block_rows):
            d = torch.from_numpy(np.array(grads[lo : lo + block_rows], dtype=np.float32))
            if metric == "cosine":
                d = _unit(d)
            s = qt @ d.T
            if aggregate == "max":
                s = s.max(dim=0, keepdim=True).values
            top.add(s, manifest["start"] + lo)
    return top.scores.numpy(), top.docs.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k rows, 3 shards, 3 repeats")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--block-rows", type=int, default=4096, help="ScoreConfig's default block size")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--before", action="store_true",
                    help="also time score_index as it was before the pre-filter and decode buffer")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows or (10_000 if args.quick else 50_000)
    shards = args.shards or (3 if args.quick else 5)
    repeats = args.repeats or (3 if args.quick else 5)

    tmp = tempfile.mkdtemp(prefix="bergson-bench-scoring-")
    try:
        t0 = time.perf_counter()
        index = write_index(tmp + "/index", rows, args.width, shards)
        t_write = time.perf_counter() - t0
        q = np.random.default_rng(1).standard_normal((args.queries, args.width), dtype=np.float32)
        qt = torch.from_numpy(q)
        k, block = args.top_k, args.block_rows

        t0 = time.perf_counter()
        first = score_index(index, q, "inner", "individual", k, block)
        t_first = time.perf_counter() - t0
        corpus = load_corpus(index)
        corpus16 = corpus.half()
        base = matmul_topk(qt, corpus, k, block)
        same = np.array_equal(first[1], base[1].numpy())
        gap = float(np.abs(first[0] - base[0].numpy()).max())

        methods = {
            "score_index inner": lambda: score_index(index, q, "inner", "individual", k, block),
            "score_index cosine": lambda: score_index(index, q, "cosine", "individual", k, block),
            "matmul in memory": lambda: matmul_topk(qt, corpus, k, block),
            "f16 in memory": lambda: matmul_topk(qt, corpus16, k, block),
        }
        if args.before:
            same_before = all(
                np.array_equal(x, y) for metric in ("inner", "cosine")
                for x, y in zip(score_index_before(index, q, metric, "individual", k, block),
                                score_index(index, q, metric, "individual", k, block)))
            methods["score_index inner, before"] = lambda: score_index_before(index, q, "inner", "individual", k, block)
            methods["score_index cosine, before"] = lambda: score_index_before(index, q, "cosine", "individual", k,
                                                                               block)
        names = list(methods)
        times = {n: [] for n in names}
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                methods[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}

        gb = rows * args.width * 2 / 1e9
        print(f"corpus {rows:,} x {args.width:,} float16 ({gb:.2f} GB) in {shards} shards, {args.queries} queries, "
              f"top-{k}, blocks of {block:,} rows, {torch.get_num_threads()} threads, {repeats} repeats "
              f"(index written in {t_write:.1f} s)")
        print(f"top-{k} documents identical to the baseline: {same}; max score difference {gap:.2e}")
        if args.before:
            print(f"score_index before the changes gives bitwise the same top-{k} scores and documents "
                  f"(inner and cosine): {same_before}")
        print(f"| {'method':<30} | {'median s':>9} | {'min s':>7} | {'rows/s':>12} | {'vs matmul':>9} |")
        print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 14}|{'-' * 11}|")
        base_t = med["matmul in memory"]
        for n in names:
            print(f"| {n:<30} | {med[n]:>9.3f} | {min(times[n]):>7.3f} | {rows / med[n]:>12,.0f} | "
                  f"{base_t / med[n]:>9.2f} |")
        print(f"| {'first score_index (+sha256)':<30} | {t_first:>9.3f} | {'':>7} | {rows / t_first:>12,.0f} | "
              f"{base_t / t_first:>9.2f} |")
        for n in [n for n in names if n.startswith("score_index")]:
            paired = [b / a for a, b in zip(times[n], times["matmul in memory"])]
            print(f"{n} / matmul, median of per-repeat ratios: {statistics.median(paired):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
