"""Interop with the real Bergson 2.5.1 (its own venv, `../shared/peers/README.md`), both directions.

1. Export: this project builds an index of the peers' job (job/corpus500.jsonl, small GPT-NeoX,
   p = 16, float32) and its query gradients (job/queries.jsonl); `bergson export` writes it in
   Bergson's layout; Bergson's own `Attributor` (unit_norm, i.e. cosine) scores every document for
   every query from the exported folder, this project scores the same with its own scoring code.
2. Import: an index Bergson built (job/sbs/out-bergson, 20,000 documents, from the peers'
   side-by-side run) and Bergson's query gradients of the same queries (`bergson reduce
   --aggregation none`, run here) are imported with `bergson import`; this project scores the
   imported index and Bergson's Attributor scores the original folder.

Prints, per direction, top-10 agreement (mean overlap of the top-10 sets), the share of queries
with the same top-1, and the largest absolute score difference.

    PYTHONPATH=. .venv/bin/python benchmarks/bergson_interop.py [--job /work/peers/job]
        [--bergson-python /work/bergson-venv/bin/python] [--out /tmp/bergson-interop]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

BERGSON_SIDE = r"""
import json, sys, numpy as np, torch
from bergson.query.attributor import Attributor
from bergson.data import column_offsets
index, queries, out = sys.argv[1:4]
att = Attributor(index, unit_norm=True)
q = np.load(queries)
sizes = json.load(open(index + "/info.json"))["grad_sizes"]
qd = {n: torch.from_numpy(q[:, lo:hi].astype(np.float32)) for n, (lo, hi) in column_offsets(sizes).items()}
scores, idx = att.search(qd, k=None)
full = np.zeros((q.shape[0], att.N), np.float32)
np.put_along_axis(full, idx.numpy(), scores.float().numpy(), axis=1)
np.save(out, full)
"""


def our_scores(index: str, q: np.ndarray) -> np.ndarray:
    """Cosine scores [Q, N] of every document with this project's scoring code."""
    import torch

    from bergson_core.index.store import Index, grad_matrix
    from bergson_core.scoring.score import prepare_queries, score_block

    qt = prepare_queries(q, "cosine", "individual", torch.float32)
    blocks = [score_block(qt, grad_matrix(t), "cosine", "individual") for _, t in Index(index).iter_shards()]
    return torch.cat(blocks, dim=1).numpy()


def bergson_scores(py: str, folder: str, q: np.ndarray, work: str) -> np.ndarray:
    qpath, out = os.path.join(work, "q.npy"), os.path.join(work, "bergson-scores.npy")
    np.save(qpath, q)
    subprocess.run([py, "-c", BERGSON_SIDE, folder, qpath, out], check=True, env=_bergson_env())
    return np.load(out)


def _bergson_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return dict(env, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")


def compare(what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    top = lambda s: np.argsort(-s, axis=1, kind="stable")[:, :10]  # noqa: E731
    a, b = top(ours), top(theirs)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])
    same1 = np.mean(a[:, 0] == b[:, 0])
    print(f"{what}: {ours.shape[0]} queries x {ours.shape[1]} documents; top-10 overlap {overlap:.3f}, "
          f"same top-1 {same1:.3f}, max |score difference| {np.abs(ours - theirs).max():.2e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="/work/peers/job")
    ap.add_argument("--bergson-python", default="/work/bergson-venv/bin/python")
    ap.add_argument("--out", default="/tmp/bergson-interop")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bergson_core.config import BuildConfig, ScoreConfig
    from bergson_core.config.interop import ExportConfig, ImportConfig
    from bergson_core.index.bergson_format import export_bergson, import_bergson
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.index.store import Index, grad_matrix
    from bergson_core.scoring.score import query_gradients

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    job = args.job

    # 1. our index -> Bergson's layout -> Bergson's Attributor
    ours = os.path.join(args.out, "ours")
    cfg = BuildConfig(index=ours, model=os.path.join(job, "model"), dataset=os.path.join(job, "corpus500.jsonl"),
                      projection_dim=16, grad_dtype="float32", batch_tokens=2048, shard_size=250, progress=False)
    for shard, start, stop in prepare_build(cfg).shards:
        build_shard(cfg, shard, start, stop)
    meta = Index(ours).meta()
    q = query_gradients(meta, ScoreConfig(index=ours, queries=os.path.join(job, "queries.jsonl"), progress=False)).grads
    exported = os.path.join(args.out, "exported")
    export_bergson(ExportConfig(index=ours, output=exported))
    compare("export (ours scored by Bergson)", our_scores(ours, q), bergson_scores(args.bergson_python, exported, q,
                                                                                    args.out))

    # 2. Bergson's index (+ Bergson's query gradients) -> this store -> our scoring
    src = os.path.join(job, "sbs", "out-bergson")
    qdir = os.path.join(args.out, "bergson-queries")
    subprocess.run([os.path.join(os.path.dirname(args.bergson_python), "bergson"), "reduce", qdir,
                    "--dataset", os.path.join(job, "queries_hf"), "--aggregation", "none", "--model",
                    os.path.join(job, "model"), "--token_batch_size", "2048", "--projection_dim", "16",
                    "--overwrite"], check=True, env=_bergson_env(), stdout=subprocess.DEVNULL)
    imported, qimported = os.path.join(args.out, "imported"), os.path.join(args.out, "imported-queries")
    import_bergson(ImportConfig(source=src, index=imported, model=os.path.join(job, "model")))
    import_bergson(ImportConfig(source=qdir, index=qimported, model=os.path.join(job, "model")))
    bq = np.concatenate([grad_matrix(t) for _, t in Index(qimported).iter_shards()])
    compare("import (Bergson's index scored here)", our_scores(imported, bq),
            bergson_scores(args.bergson_python, src, bq, args.out))
    json.dump({"ok": True}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
