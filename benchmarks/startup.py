"""Time from invoking `bergson build` to its first computed batch, cold and warm, and what the
same two pieces of work cost when run one after the other.

Each figure is seconds from the parent's Popen to an event in the child (wall clock, time.time()):

  bergson build, cold DB     `bergson build INDEX --model M --dataset D` with a fresh PREFECT_HOME:
                             the embedded Prefect API creates its database; the first batch is the
                             time bergson_core writes to $BERGSON_FIRST_BATCH_FILE
  bergson build, warm DB     the same again with the same PREFECT_HOME (database exists)
  prefect API alone, cold    `import prefect; SubprocessASGIServer().start()` in a bare python, fresh
  prefect API alone, warm    PREFECT_HOME / reused one: the orchestration start on its own
  model + first batch alone  plain python: import bergson_core, prepare_build (validate, load model
                             and corpus) and build_shard up to its first batch; no Prefect at all
  serial sum                 prefect API alone + model + first batch alone: what the CLI would pay
                             if it started Prefect and then loaded the model (no overlap)
  phases                     the CLI run in-process (flows.cli.main) with timestamps patched around
                             start_prefect and prepare_build: where the seconds to first batch go

How to read it: the CLI overlaps the two (flows/startup.py: model loading in a background thread
while the main thread starts the API), so its figure should sit near max(prefect, model) rather
than their sum; "saved by overlap" = serial sum - CLI. Target (issue 2): CLI to first batch <= 8 s
on 2 cores. Runs alternate between kinds; medians over repeats. The load average is printed because
other processes on the machine slow every figure.

    .venv/bin/python benchmarks/startup.py            # 3 repeats
    .venv/bin/python benchmarks/startup.py --quick    # 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

PY = sys.executable
BERGSON = os.path.join(os.path.dirname(PY), "bergson")

PREFECT_ALONE = textwrap.dedent("""
    import time
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    server.start()
    print(repr(time.time()), flush=True)
    server.stop()
""")

# the real CLI in-process, with timestamps of its phases (written as JSON to argv[1])
INSTRUMENTED = textwrap.dedent("""
    import json, sys, time
    T = {}
    import flows.cli as cli
    T["CLI imports done"] = time.time()
    import bergson_core.index.build as core_build
    import flows.build_cli as cmd
    import flows.startup as startup
    start_prefect, prepare_build = startup.start_prefect, core_build.prepare_build
    def timed_start():
        T["API start begins"] = time.time()
        start_prefect()
        T["API ready"] = time.time()
    def timed_prepare(cfg, write=True):
        T.setdefault("preload begins", time.time())
        out = prepare_build(cfg, write)
        T.setdefault("preload done (model + corpus)", time.time())
        return out
    startup.start_prefect, core_build.prepare_build = timed_start, timed_prepare
    if hasattr(cmd, "start_prefect"):  # an older layout imported it by name
        cmd.start_prefect = timed_start
    rc = cli.main(sys.argv[2:])
    T["exit"] = time.time()
    json.dump(T, open(sys.argv[1], "w"))
    sys.exit(rc)
""")

MODEL_ALONE = textwrap.dedent("""
    import sys
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.config import BuildConfig
    cfg = BuildConfig(index=sys.argv[1], model=sys.argv[2], dataset=sys.argv[3], progress=False)
    plan = prepare_build(cfg)
    build_shard(cfg, *plan.shards[0])
""")


def make_inputs(root: str, docs: int) -> tuple[str, str]:
    """A small saved GPT-2 (h128, 4 layers) and a JSONL corpus of `docs` documents."""
    from transformers.utils import logging as hf_logging

    from bergson_core.eval.demo import make_corpus
    from bergson_core.model.tiny import save_tiny

    hf_logging.disable_progress_bar()

    rows, _ = make_corpus(docs_per_topic=max(1, docs // 8))
    corpus = os.path.join(root, "corpus.jsonl")
    with open(corpus, "w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    model = save_tiny(os.path.join(root, "model"), "gpt2", [r["text"] for r in rows], hidden=128, layers=4,
                      heads=4)
    return model, corpus


def child_env(root: str, home: str, first_batch: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no API URL: embedded
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               BERGSON_CACHE=os.path.join(root, "cache"))
    env.pop("BERGSON_FIRST_BATCH_FILE", None)
    if first_batch:
        env["BERGSON_FIRST_BATCH_FILE"] = first_batch
    return env


class Runner:
    def __init__(self, root: str, model: str, corpus: str):
        self.root, self.model, self.corpus, self.n = root, model, corpus, 0

    def _fresh(self, what: str) -> str:
        self.n += 1
        return os.path.join(self.root, f"{what}-{self.n}")

    def cli(self, home: str) -> tuple[float, float]:
        """(seconds to first batch, seconds to exit) of `bergson build`."""
        index, mark = self._fresh("index"), self._fresh("first-batch")
        cmd = [BERGSON, "build", index, "--model", self.model, "--dataset", self.corpus, "--no-progress"]
        t0 = time.time()
        proc = subprocess.run(cmd, env=child_env(self.root, home, mark), capture_output=True, text=True,
                              timeout=600)
        t_exit = time.time() - t0
        if proc.returncode != 0 or not os.path.exists(mark):
            raise RuntimeError(f"bergson build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(mark) as f:
            return float(f.read()) - t0, t_exit

    def instrumented(self, home: str) -> dict[str, float]:
        """Seconds from Popen to each phase of an in-process `bergson build` run."""
        index, mark, phases = self._fresh("index"), self._fresh("first-batch"), self._fresh("phases")
        cmd = [PY, "-c", INSTRUMENTED, phases, "build", index, "--model", self.model, "--dataset", self.corpus,
               "--no-progress"]
        t0 = time.time()
        proc = subprocess.run(cmd, env=child_env(self.root, home, mark), capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0 or not os.path.exists(mark):
            raise RuntimeError(f"instrumented bergson build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(phases) as f:
            out = {k: v - t0 for k, v in json.load(f).items()}
        with open(mark) as f:
            out["first batch"] = float(f.read()) - t0
        return dict(sorted(out.items(), key=lambda kv: kv[1]))

    def prefect_alone(self, home: str) -> float:
        t0 = time.time()
        proc = subprocess.run([PY, "-c", PREFECT_ALONE], env=child_env(self.root, home), capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"prefect server start failed:\n{proc.stderr[-3000:]}")
        return float(proc.stdout.strip().splitlines()[-1]) - t0

    def model_alone(self) -> float:
        index, mark = self._fresh("index"), self._fresh("first-batch")
        t0 = time.time()
        proc = subprocess.run([PY, "-c", MODEL_ALONE, index, self.model, self.corpus],
                              env=child_env(self.root, self._fresh("unused-home"), mark),
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not os.path.exists(mark):
            raise RuntimeError(f"plain model load + first batch failed:\n{proc.stderr[-3000:]}")
        with open(mark) as f:
            return float(f.read()) - t0


def check_progress_flag() -> None:
    out = subprocess.run([BERGSON, "build", "--help"], capture_output=True, text=True).stdout
    if "--no-progress" not in out:
        raise SystemExit("bergson build has no --no-progress flag: update benchmarks/startup.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--docs", type=int, default=400, help="corpus size (one shard of 1000 holds them all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    check_progress_flag()
    root = tempfile.mkdtemp(prefix="bergson-bench-startup-")
    try:
        model, corpus = make_inputs(root, args.docs)
        run = Runner(root, model, corpus)
        load0 = os.getloadavg()[0]
        res: dict[str, list[float]] = {}
        phases: dict[str, dict[str, list[float]]] = {}

        def add(key, value):
            res.setdefault(key, []).append(value)

        for r in range(repeats):
            kinds = ["cli", "prefect", "model", "phases"]
            kinds = kinds[r % 4:] + kinds[: r % 4]  # rotate, so no kind always runs first
            for kind in kinds:
                if kind == "cli":
                    home = run._fresh("prefect-home")
                    first, total = run.cli(home)
                    add("bergson build, cold DB", first)
                    add("  (cold: to exit)", total)
                    first, total = run.cli(home)
                    add("bergson build, warm DB", first)
                    add("  (warm: to exit)", total)
                elif kind == "prefect":
                    home = run._fresh("prefect-home")
                    add("prefect API alone, cold", run.prefect_alone(home))
                    add("prefect API alone, warm", run.prefect_alone(home))
                elif kind == "model":
                    add("model + first batch alone", run.model_alone())
                else:
                    home = run._fresh("prefect-home")
                    for which in ("cold", "warm"):
                        for phase, t in run.instrumented(home).items():
                            phases.setdefault(which, {}).setdefault(phase, []).append(t)
        med = {k: statistics.median(v) for k, v in res.items()}
        for which in ("cold", "warm"):
            serial = [p + m for p, m in zip(res[f"prefect API alone, {which}"], res["model + first batch alone"])]
            med[f"serial sum, {which}"] = statistics.median(serial)
        print(f"{os.cpu_count()} cores, load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
              f"{repeats} repeats; model: saved GPT-2 h128 x 4 layers; corpus: {args.docs} documents")
        print(f"| {'seconds from Popen to first batch':<36} | {'median':>7} | {'all runs':<28} |")
        print(f"|{'-' * 38}|{'-' * 9}|{'-' * 30}|")
        order = ["bergson build, cold DB", "  (cold: to exit)", "bergson build, warm DB", "  (warm: to exit)",
                 "prefect API alone, cold", "prefect API alone, warm", "model + first batch alone",
                 "serial sum, cold", "serial sum, warm"]
        for k in order:
            runs = ", ".join(f"{v:.1f}" for v in res.get(k, []))
            print(f"| {k:<36} | {med[k]:>7.2f} | {runs:<28} |")
        for which in ("cold", "warm"):
            cli, serial = med[f"bergson build, {which} DB"], med[f"serial sum, {which}"]
            print(f"{which}: CLI {cli:.2f} s vs serial {serial:.2f} s -> saved by overlap {serial - cli:.2f} s "
                  f"(CLI / serial = {cli / serial:.2f}); target <= 8 s: {'MET' if cli <= 8 else 'MISSED'}")
        print("\nphases of the same CLI run in-process (seconds from Popen, medians; start-up is overlapped when")
        print("'API ready' and 'preload done' are close; the rest before 'first batch' is flow/task start):")
        print(f"| {'phase':<32} | {'cold DB':>8} | {'warm DB':>8} |")
        print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|")
        for phase in phases["warm"]:
            cells = [statistics.median(phases[w][phase]) if phase in phases[w] else float("nan")
                     for w in ("cold", "warm")]
            print(f"| {phase:<32} | {cells[0]:>8.2f} | {cells[1]:>8.2f} |")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
