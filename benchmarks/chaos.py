"""Chaos run for issue 12: an adversarial user against the real `bergson` console script.

    .venv/bin/python benchmarks/chaos.py [--kills 10] [--seed 0]

1. kill -9 loop: builds killed at random moments, then rerun; each must end byte-identical to an
   uninterrupted build.
2. S3 outages (moto behind a TCP proxy that refuses connections, so the data survives): a short one
   is ridden out; a long one ends in one line naming the endpoint, and the rerun resumes.
3. Two concurrent builds of one index (the second with another seed and --overwrite).
4. A table of bad inputs: each must give one line on stderr, exit 2, no traceback.
5. Would-be silent wrong results: a changed model, a reordered corpus, null and empty texts, a
   corrupt shard under a rebuild.

Prints: resumes byte-identical / total, bad inputs with a one-line error / total, silent wrong
results (must be 0). Everything runs offline on CPU; CLI runs share one Prefect test harness.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", os.path.join(ROOT, ".prefect", "chaos"))
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)

EXE = os.path.join(os.path.dirname(sys.executable), "bergson")
ENV: dict[str, str] = {}


def tree(folder: str) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith("lease.json"):
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, **(env or {})})


def one_line(proc) -> bool:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout


class Tally:
    def __init__(self):
        self.resumes, self.resumes_ok = 0, 0
        self.bad, self.bad_ok = 0, 0
        self.wrong: list[str] = []

    def resume(self, what: str, ok: bool) -> None:
        self.resumes += 1
        self.resumes_ok += ok
        print(f"  resume  {'ok  ' if ok else 'FAIL'} {what}", flush=True)

    def bad_input(self, what: str, proc) -> None:
        self.bad += 1
        ok = one_line(proc)
        self.bad_ok += ok
        first = (proc.stderr.strip().splitlines() or [""])[-1][:150]
        print(f"  input   {'ok  ' if ok else 'FAIL'} {what}: exit {proc.returncode}: {first}", flush=True)
        if proc.returncode == 0:
            self.wrong.append(f"bad input accepted: {what}")

    def silent(self, what: str, wrong: bool) -> None:
        print(f"  guard   {'WRONG' if wrong else 'ok  '} {what}", flush=True)
        if wrong:
            self.wrong.append(what)


def workspace(root: str) -> dict:
    from bergson_core.model.tiny import save_tiny
    from tests.flows.conftest import write_jsonl

    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(words[(i * 7 + j) % 60] for j in range(40 + i % 20)) for i in range(60)]
    corpus = write_jsonl(os.path.join(root, "c60.jsonl"), [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    queries = write_jsonl(os.path.join(root, "q.jsonl"), [{"text": texts[3]}, {"text": texts[17][:80]}])
    model = save_tiny(os.path.join(root, "M"), "gpt2", texts, hidden=128, layers=4)  # ~1 s a shard: kills land mid-build
    return {"root": root, "corpus": corpus, "queries": queries, "model": model, "texts": texts}


def common(ws) -> list[str]:
    return ["--model", ws["model"], "--dataset", ws["corpus"], "--shard-size", "10", "--projection-dim", "0",
            "--grad-dtype", "float32", "--id-column", "id", "--no-progress"]


def kill_loop(ws, tally: Tally, kills: int, rng: random.Random) -> dict:
    print("kill -9 loop", flush=True)
    ref = os.path.join(ws["root"], "reference")
    t0 = time.time()
    assert cli("build", ref, *common(ws)).returncode == 0
    full = time.time() - t0
    reference = tree(ref)
    for k in range(kills):
        index = os.path.join(ws["root"], f"killed-{k}")
        after = rng.randrange(0, 6)  # kill once this many shards are done, plus a random part of one shard
        extra = rng.uniform(0.0, 0.8)
        proc = subprocess.Popen([EXE, "build", index, *common(ws)], env={**os.environ, **ENV},
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while time.time() - t0 < full and len(glob.glob(os.path.join(index, "grads", "*.json"))) < after:
            time.sleep(0.01)
        time.sleep(extra)
        delay = time.time() - t0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = len(glob.glob(os.path.join(index, "grads", "*.json")))
        rerun = cli("build", index, *common(ws))
        tally.resume(f"killed at {delay:.1f} s ({done}/6 shards done)", rerun.returncode == 0 and tree(index) == reference)
    return reference


def outages(ws, tally: Tally, reference: dict) -> None:
    from tests.flows.outage import S3Outage

    print("S3 outages", flush=True)
    s3 = S3Outage()
    opts = json.dumps({**s3.options, "config_kwargs": {"retries": {"max_attempts": 1}}})
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options)

    def same_as_reference(prefix: str) -> bool:
        names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"bergson-test/{prefix}/grads", refresh=True))
        local = sorted(n.rsplit("/", 1)[1] for n in reference if n.startswith("grads/"))
        return names == local and all(fs.cat_file(f"bergson-test/{prefix}/grads/{n}") == reference[f"grads/{n}"]
                                      for n in names)
    try:
        # short: 8 s without the store in the middle of a build
        threading.Timer(4.0, s3.proxy.down).start()
        threading.Timer(12.0, s3.proxy.up).start()
        t_start = time.time()
        proc = cli("build", "s3://bergson-test/short", *common(ws), "--storage-options", opts)
        time.sleep(max(0.0, t_start + 12.5 - time.time()))  # the store is back before the next case
        tally.resume("short outage (8 s) ridden out", proc.returncode == 0 and same_as_reference("short"))
        # long: the store stays away past the retry budget, then comes back; the rerun resumes
        threading.Timer(4.0, s3.proxy.down).start()
        proc = cli("build", "s3://bergson-test/long", *common(ws), "--storage-options", opts,
                   env={"BERGSON_STORE_RETRY_SECONDS": "10"})
        s3.proxy.up()
        gave_up = one_line(proc) and s3.endpoint in proc.stderr
        print(f"  outage  {'ok  ' if gave_up else 'FAIL'} long outage: exit {proc.returncode}: "
              f"{proc.stderr.strip()[-200:]}", flush=True)
        tally.bad += 1
        tally.bad_ok += gave_up
        rerun = cli("build", "s3://bergson-test/long", *common(ws), "--storage-options", opts)
        tally.resume("long outage, then rerun", rerun.returncode == 0 and same_as_reference("long"))
        missing_bucket = cli("build", "s3://no-such-bucket/idx", *common(ws), "--storage-options", opts)
        tally.bad_input("missing bucket", missing_bucket)
        s3.proxy.down()
        dead = cli("build", "s3://bergson-test/dead", *common(ws), "--storage-options", opts,
                   env={"BERGSON_STORE_RETRY_SECONDS": "3"})
        tally.bad_input("unreachable endpoint", dead)
    finally:
        s3.stop()


def concurrent(ws, tally: Tally, reference: dict) -> None:
    print("concurrent builds", flush=True)
    index = os.path.join(ws["root"], "shared")
    first = subprocess.Popen([EXE, "build", index, *common(ws)], env={**os.environ, **ENV},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(index, "lease.json")):
        time.sleep(0.05)
    second = cli("build", index, *common(ws), "--projection-seed", "1", "--overwrite")
    first.communicate()
    refused = one_line(second) and "being built by another run" in second.stderr
    print(f"  lease   {'ok  ' if refused else 'FAIL'} second build: exit {second.returncode}: {second.stderr.strip()}")
    tally.silent("two builds into one index", first.returncode == 0 and tree(index) != reference)
    if second.returncode == 0:
        tally.silent("second concurrent build accepted", True)
    score = cli("score", index, "--queries", ws["queries"], "--output", os.path.join(ws["root"], "s-shared"))
    tally.silent("score after concurrent builds", score.returncode == 0 and not refused)


def bad_inputs(ws, tally: Tally) -> None:
    print("bad inputs", flush=True)
    root = ws["root"]
    d = lambda name: os.path.join(root, name)  # noqa: E731
    open(d("blob.jsonl"), "wb").write(bytes(range(256)) * 8)
    open(d("data.bin"), "wb").write(b"\x00\x01\x02")
    open(d("a-file"), "w").write("x")
    os.makedirs(d("garbage"), exist_ok=True)
    open(d("garbage/index.json"), "w").write("{\x00")
    os.makedirs(d("empty-json"), exist_ok=True)
    open(d("empty-json/index.json"), "w").write("")
    open(d("empty.jsonl"), "w").write("")
    open(d("broken.jsonl"), "w").write('{"text": "a"}\n{"text": oops}\n')
    open(d("allempty.jsonl"), "w").write('{"text": ""}\n{"text": null}\n')
    build = ["--model", ws["model"], "--dataset", ws["corpus"], "--no-progress"]
    cases = [
        ("garbage index.json", ["build", d("garbage"), *build]),
        ("empty index.json", ["build", d("empty-json"), *build]),
        ("binary dataset", ["build", d("i1"), *build, "--dataset", d("blob.jsonl")]),
        (".bin dataset", ["build", d("i2"), *build, "--dataset", d("data.bin")]),
        ("index path is a file", ["build", d("a-file"), *build]),
        ("huge --projection-dim", ["build", d("i3"), *build, "--projection-dim", "100000"]),
        ("empty corpus", ["build", d("i4"), *build, "--dataset", d("empty.jsonl")]),
        ("malformed jsonl", ["build", d("i5"), *build, "--dataset", d("broken.jsonl")]),
        ("missing model", ["build", d("i6"), *build, "--model", d("nope")]),
        ("unknown column", ["build", d("i7"), *build, "--text-column", "body"]),
        ("score: missing index", ["score", d("nothing"), "--queries", ws["queries"]]),
        ("score: --output is a file", ["score", d("reference"), "--queries", ws["queries"], "--output", d("a-file")]),
        ("score: all-empty queries", ["score", d("reference"), "--queries", d("allempty.jsonl"), "--output", d("s1")]),
    ]
    for what, args in cases:
        tally.bad_input(what, cli(*args))
    ok = cli("build", d("garbage"), *build, "--projection-dim", "2", "--overwrite")
    print(f"  input   {'ok  ' if ok.returncode == 0 else 'FAIL'} --overwrite replaces a garbage index.json")
    # a corrupt and an incomplete index, refused before query gradients
    for what, damage in (("corrupt", "bytes"), ("incomplete", "manifest")):
        index = d(f"damaged-{what}")
        shutil.copytree(d("reference"), index)
        if damage == "bytes":
            p = os.path.join(index, "grads", "shard-00002.arrow")
            data = bytearray(open(p, "rb").read())
            data[-64] ^= 0xFF
            open(p, "wb").write(bytes(data))
        else:
            os.remove(os.path.join(index, "grads", "shard-00004.json"))
        tally.bad_input(f"score: {what} index", cli("score", index, "--queries", ws["queries"], "--output", d(f"s-{what}")))


def wrong_results(ws, tally: Tally, reference: dict) -> None:
    import pyarrow.parquet as pq

    print("would-be silent wrong results", flush=True)
    root = ws["root"]
    d = lambda name: os.path.join(root, name)  # noqa: E731
    # a model whose weights changed (same shapes)
    from transformers import AutoModelForCausalLM

    shutil.copytree(ws["model"], d("M2"))
    m = AutoModelForCausalLM.from_pretrained(d("M2"))
    m.transformer.h[0].mlp.c_fc.weight.data.mul_(1.5)
    m.save_pretrained(d("M2"))
    proc = cli("score", d("reference"), "--queries", ws["queries"], "--model", d("M2"), "--output", d("s-m2"))
    tally.silent("score with another same-shaped model", proc.returncode == 0)
    allowed = cli("score", d("reference"), "--queries", ws["queries"], "--model", d("M2"), "--output", d("s-m2b"),
                  "--allow-model-mismatch")
    tally.silent("--allow-model-mismatch says so", allowed.returncode != 0 or "allow-model-mismatch" not in allowed.stdout)
    # the corpus reordered after the build
    index = d("reordered")
    corpus = d("c-reordered.jsonl")
    shutil.copy(ws["corpus"], corpus)
    cli("build", index, *common(ws), "--dataset", corpus)
    lines = open(corpus).read().splitlines()
    open(corpus, "w").write("\n".join(reversed(lines)) + "\n")
    proc = cli("score", index, "--queries", ws["queries"], "--output", d("s-re"))
    top = pq.read_table(d("s-re/topk.parquet")).to_pydict() if proc.returncode == 0 else {"doc_index": [], "text": []}
    wrong = any(t is not None and not ws["texts"][i].startswith(t.rstrip("…")) for i, t in zip(top["doc_index"], top["text"]))
    tally.silent("texts of a reordered corpus", wrong)
    # a null text
    open(d("nulls.jsonl"), "w").write('{"text": null}\n{"text": "w1 w2 w3"}\n')
    cli("build", d("nulls"), "--model", ws["model"], "--dataset", d("nulls.jsonl"), "--no-progress")
    rows = [json.loads(open(p).read()) for p in glob.glob(d("nulls/grads/*.json"))]
    tally.silent("a null text counted as empty", sum(r["empty_documents"] for r in rows) != 1)
    # a corrupt shard under a rebuild
    index = d("rebuilt")
    shutil.copytree(d("reference"), index)
    p = os.path.join(index, "grads", "shard-00001.arrow")
    data = bytearray(open(p, "rb").read())
    data[-64] ^= 0xFF
    open(p, "wb").write(bytes(data))
    proc = cli("build", index, *common(ws))
    tally.silent("rebuild over a corrupt shard", proc.returncode == 0 and tree(index) != reference)
    print(f"          rebuild said: {[line for line in proc.stdout.splitlines() if 'recomputed' in line]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import logging

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    tally = Tally()
    root = tempfile.mkdtemp(prefix="bergson-chaos-")
    t0 = time.time()
    with prefect_test_harness(server_startup_timeout=180):
        ENV.update(PREFECT_API_URL=PREFECT_API_URL.value(), BERGSON_CACHE=os.path.join(root, "cache"))
        ws = workspace(root)
        reference = kill_loop(ws, tally, args.kills, random.Random(args.seed))
        concurrent(ws, tally, reference)
        outages(ws, tally, reference)
        bad_inputs(ws, tally)
        wrong_results(ws, tally, reference)
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nresumes byte-identical: {tally.resumes_ok}/{tally.resumes}")
    print(f"bad inputs with a one-line error: {tally.bad_ok}/{tally.bad}")
    print(f"silent wrong results: {len(tally.wrong)}" + (f" ({'; '.join(tally.wrong)})" if tally.wrong else ""))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
