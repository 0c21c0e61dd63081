"""How far `bergson plan`'s time estimate is from the build it describes.

The peers' job (`../shared/peers`: job/corpus.jsonl, 2,000 documents, small GPT-NeoX, p = 16,
float32, 2,048-token batches, 250-document shards, one replica): the plan (a calibration batch of
--calibration-documents, timed) and then the build, in one process. Prints the plan's compute
seconds, the build's busy seconds (shard tasks, one replica: their sum) and its wall seconds, and
the ratios; tokens and bytes must agree exactly.

    PYTHONPATH=. .venv/bin/python benchmarks/plan_accuracy.py [--job /work/peers/job] [--corpus corpus]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="/work/peers/job")
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--out", default="/tmp/plan-accuracy")
    ap.add_argument("--calibration-documents", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bergson_core.config import BuildConfig
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.index.plan import plan_build

    shutil.rmtree(args.out, ignore_errors=True)
    cfg = BuildConfig(index=args.out, model=os.path.join(args.job, "model"),
                      dataset=os.path.join(args.job, f"{args.corpus}.jsonl"), projection_dim=16, grad_dtype="float32",
                      batch_tokens=2048, shard_size=250, devices="cpu:1", progress=False,
                      calibration_documents=args.calibration_documents)
    t0 = time.perf_counter()
    plan = plan_build(cfg)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = [build_shard(cfg, *s) for s in prepare_build(cfg).missing()]
    wall = time.perf_counter() - t0
    busy = sum(d["seconds"] for d in done)
    tokens, nbytes = sum(d["tokens"] for d in done), sum(d["bytes"] for d in done)
    print(f"plan took {t_plan:.1f} s; tokens {plan['tokens']:,} vs {tokens:,}, bytes {plan['bytes']:,} vs {nbytes:,}")
    print(f"estimated {plan['seconds']:.1f} s; build busy {busy:.1f} s (ratio {busy / plan['seconds']:.2f}), "
          f"wall {wall:.1f} s (ratio {wall / plan['seconds']:.2f})")


if __name__ == "__main__":
    main()
