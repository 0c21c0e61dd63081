"""Peak memory of a whole `bergson build` as the corpus grows (issue 11: flat in corpus size).

Builds the peers' job (`../shared/peers`, made by its make_job.py) on the first N documents of
`corpus20k.jsonl` for each N, each a whole process from an empty index folder, and prints wall
seconds, CPU seconds and peak RSS (the CLI process's ru_maxrss; the embedded Prefect API server is
a separate process) per size, and the ratio of each peak to the smallest size's.

    .venv/bin/python benchmarks/build_memory.py --job ../shared/peers/job --docs 2000 6000 [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run_build(job: str, corpus: str, out: str, env: dict) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "flows.cli", "build", out, "--model", f"{job}/model", "--dataset", corpus,
           "--batch-tokens", "2048", "--projection-dim", "16", "--no-progress"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build of {corpus} failed: {err.strip().splitlines()[-1:]}")
    return time.time() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="../shared/peers/job")
    ap.add_argument("--docs", type=int, nargs="+", default=[2000, 6000])
    ap.add_argument("--env", nargs="*", default=[], help="extra NAME=VALUE for the builds (e.g. MALLOC_ARENA_MAX=2)")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", CUDA_VISIBLE_DEVICES="")
    env.update(kv.split("=", 1) for kv in args.env)
    with open(f"{args.job}/corpus20k.jsonl") as f:
        lines = f.readlines()
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("PREFECT_HOME", f"{tmp}/prefect")
        peaks = {}
        for n in args.docs:
            corpus = f"{tmp}/corpus{n}.jsonl"
            with open(corpus, "w") as f:
                f.writelines(lines[:n])
            wall, cpu, peak = run_build(args.job, corpus, f"{tmp}/index{n}", env)
            peaks[n] = peak
            print(f"{n:>6} docs: {wall:7.1f} s wall, {cpu:7.1f} s CPU, peak RSS {peak / 2**20:7.0f} MB, "
                  f"x{peak / peaks[args.docs[0]]:.2f} of {args.docs[0]} docs", flush=True)


if __name__ == "__main__":
    main()
