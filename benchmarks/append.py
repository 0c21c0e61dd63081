"""Appending 10 % of a corpus against rebuilding it, EK-FAC refit included.

The peers' 20k job (`../shared/peers`, job/corpus20k.jsonl, small GPT-NeoX, p = 16, float32,
2,048-token batches, 1,000-document shards): an index of the first 18,000 documents with EK-FAC
fitted (KFAC factors from model passes, the eigenvalue pass from the stored rows) gets the last
2,000 documents appended (`build --append`, then `fit` again: KFAC partials of the two new shards,
the sums reduced, the eigenvalue pass over the rows in the new basis, the fit). The full rebuild
builds all 20,000 into a fresh index and fits it. One process, one Prefect API started before the
clock (so neither side pays its start-up), the flows run as the CLI runs them (`launch`). Prints
wall seconds of each step and the ratio append / rebuild, and checks that both fits are equal.

    PYTHONPATH=. .venv/bin/python benchmarks/append.py [--job /work/peers/job] [--out /tmp/append-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="/work/peers/job")
    ap.add_argument("--out", default="/tmp/append-bench")
    ap.add_argument("--corpus", default="corpus20k", help="job/CORPUS.jsonl (corpus: the 2,000-document job)")
    ap.add_argument("--old", type=int, default=18000, help="documents indexed before the append")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--skip-rebuild", action="store_true", help="stop after the append: the ratio to the old "
                    "documents' build + fit bounds the ratio to a rebuild from above")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bergson_core import curvature as C
    from bergson_core.config import BuildConfig
    from bergson_core.config.curvature import FitConfig
    from flows.commands import launch
    from flows.startup import start_prefect

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    lines = open(os.path.join(args.job, f"{args.corpus}.jsonl")).read().splitlines(keepends=True)
    old, new = os.path.join(args.out, "old.jsonl"), os.path.join(args.out, "new.jsonl")
    open(old, "w").writelines(lines[: args.old])
    open(new, "w").writelines(lines[args.old:])

    def build(index: str, dataset: str, **kw) -> dict:
        return launch("build", BuildConfig(index=index, dataset=dataset, model=os.path.join(args.job, "model"),
                                           projection_dim=16, grad_dtype="float32", batch_tokens=2048,
                                           shard_size=args.shard_size, progress=False, **kw))

    def fit(index: str) -> dict:
        return launch("fit", FitConfig(index=index, strategy="ekfac", stats_source="rows", progress=False))

    def timed(what: str, fn, *a, **kw) -> float:
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        dt = time.perf_counter() - t0
        print(f"{what:<40} {dt:8.1f} s  " + (f"{result.get('shards_computed', '')} shards computed"
                                              if "shards_computed" in result else ""), flush=True)
        return dt

    start_prefect()
    grown, whole = os.path.join(args.out, "grown"), os.path.join(args.out, "whole")
    print(f"setup: index of the first {args.old} documents, fitted")
    t_old = timed("  build (old documents)", build, grown, old)
    t_old += timed("  fit ekfac (old documents)", fit, grown)
    print(f"append {len(lines) - args.old} documents and refit")
    t_append = timed("  build --append", build, grown, new, append=True)
    t_refit = timed("  fit ekfac (after the append)", fit, grown)
    # building and fitting the smaller corpus costs less than the whole: an upper bound of the ratio
    print(f"append + refit / (build + fit of the {args.old} old documents): {(t_append + t_refit) / t_old:.3f}",
          flush=True)
    if args.skip_rebuild:
        return
    print(f"full rebuild of {len(lines)} documents")
    t_build = timed("  build (all documents)", build, whole, os.path.join(args.job, f"{args.corpus}.jsonl"))
    t_fit = timed("  fit ekfac (all documents)", fit, whole)
    a, b = C.load_preconditioner(grown, "ekfac"), C.load_preconditioner(whole, "ekfac")
    same = sorted(a.tensors) == sorted(b.tensors) and all((a.tensors[k] == b.tensors[k]).all() for k in a.tensors)
    print(f"append + refit: {t_append + t_refit:.1f} s; rebuild + fit: {t_build + t_fit:.1f} s; "
          f"ratio {(t_append + t_refit) / (t_build + t_fit):.3f} (build alone {t_append / t_build:.3f}); "
          f"fits equal: {same}")


if __name__ == "__main__":
    main()
