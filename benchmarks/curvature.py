"""Curvature fits against one gradient pass, and EK-FAC against kronfluence, in one run.

On one tiny-ish random Llama (float32, CPU) and one corpus of random-token documents:

Every job runs --repeats times in a rotating order and the table shows medians.

  gradient pass   compute_gradients with projection p=16 (what `bergson build` does per shard)
  <strategy>      the statistics passes plus the float64 fit of each preconditioner:
                    diagonal  one hooked pass (full space) + division
                    kfac      one hooked pass (A, S) + eigendecompositions
                    ekfac     kfac + the eigenvalue-correction pass + division
                    autocorr  H from the stored p=16 rows (no model pass) + eigendecompositions
                  and the ratio of each to the gradient pass.
  EK-FAC vs kronfluence
                  the same EK-FAC influence computation (fit on the corpus, precondition the query
                  gradients, score against exact corpus gradients; empirical Fisher, summed loss,
                  damping 0.1 x mean eigenvalue per module) run by both, wall-clock time each, and the
                  Pearson / Spearman correlation of the two [queries x documents] score matrices.

    .venv/bin/python benchmarks/curvature.py             # defaults below
    .venv/bin/python benchmarks/curvature.py --docs 128  # smaller

Whole process (issue 17): `--whole-process` builds the issue's task instead (a 2-layer GPT-2,
n_embd 128, from a config, a word-level tokenizer and generated text: 1,000 training sequences of
10-20 tokens, 100 queries) and runs, one after the other, the real `bergson ekfac --mode exact`
(full ranking to Parquet) and kronfluence 1.0.1's fit + pairwise scores
(benchmarks/kronfluence_ekfac.py), each as its own process; it reports wall time, peak memory
(VmHWM of the main process, and the peak summed RSS of its process tree: bergson's embedded
Prefect API server is a child process) and the Pearson correlation of the two score matrices on
the same modules and damping (0.1 x the mean eigenvalue, empirical Fisher, summed loss).
`--job MODEL CORPUS QUERIES` runs the same comparison on existing files (e.g. the peers medium job).

    .venv/bin/python benchmarks/curvature.py --whole-process
    .venv/bin/python benchmarks/curvature.py --whole-process --job /work/peers/job/model_medium \
        /work/peers/job/corpus500.jsonl /work/peers/job/queries.jsonl

kronfluence is a test-only dependency (`pip install -e .[test]`, then `pip uninstall -y torchvision`).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import threading
import time
import warnings

import numpy as np
import torch

from bergson_core import curvature as C
from bergson_core.config import GradientOptions
from bergson_core.data.corpus import Doc
from bergson_core.gradients.extract import compute_gradients
from bergson_core.model.loading import LoadedModel
from bergson_core.model.loss import document_losses
from bergson_core.model.modules import find_modules
from bergson_core.model.tiny import tiny_model


class _Tok:
    pad_token_id = 0


def corpus(n: int, vocab: int, max_len: int, seed: int) -> list[Doc]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        ids = [2] + rng.integers(3, vocab, size=int(rng.integers(max_len // 2, max_len))).tolist()
        docs.append(Doc(i, str(i), ids, list(ids)))
    return docs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def ours_ekfac(loaded, modules, docs, queries, space, opts, bt):
    kfac = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(loaded, modules, docs, space, batch_tokens=bt)})
    lam = C.lambda_partial_stats(loaded, modules, docs, kfac, batch_tokens=bt)
    ekfac = C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=kfac)
    gq, _ = compute_gradients(loaded, modules, queries, opts, bt)
    gd, _ = compute_gradients(loaded, modules, docs, opts, bt)
    pq = C.apply(ekfac, gq.astype(np.float64), C.ApplyOptions(damping=0.1, damping_mode="relative"))
    return pq @ gd.astype(np.float64).T  # [Q, N]


def kronfluence_ekfac(model, modules, docs, queries, batch):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    names = [m.name for m in modules]

    class LM(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return document_losses(logits, batch["labels"]).sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    width = max(len(d.input_ids) for d in docs + queries)

    def ds(items):
        out = []
        for d in items:
            n = len(d.input_ids)
            ids, mask, lab = torch.zeros(width, dtype=torch.long), torch.zeros(width, dtype=torch.long), torch.full((width,), -100)
            ids[:n], mask[:n], lab[:n] = torch.tensor(d.input_ids), 1, torch.tensor(d.labels)
            out.append({"input_ids": ids, "attention_mask": mask, "labels": lab})
        return out

    task = LM()
    km = prepare_model(copy.deepcopy(model), task)
    with tempfile.TemporaryDirectory() as tmp:
        an = Analyzer("bench", km, task, cpu=True, output_dir=tmp, disable_tqdm=True)
        an.fit_all_factors("ekfac", ds(docs), per_device_batch_size=batch,
                           factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True))
        an.compute_pairwise_scores("s", "ekfac", ds(queries), ds(docs), per_device_query_batch_size=len(queries),
                                   per_device_train_batch_size=batch, score_args=ScoreArguments(damping_factor=None))
        return an.load_pairwise_scores("s")["all_modules"].numpy()


# -- whole process (issue 17) -------------------------------------------------------------------
def make_task(root: str, docs: int, queries: int, seed: int = 0) -> dict:
    """The issue's task: generated word sequences of 10-20 tokens (BOS + 9-19 words drawn from a
    Zipf law over 900 made-up words), a word-level tokenizer trained on them and a 2-layer GPT-2
    (n_embd 128, 4 heads) initialised from a config."""
    import json

    from bergson_core.model.tiny import save_tiny

    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = sorted({"".join(rng.choice(letters, size=int(rng.integers(3, 8)))) for _ in range(1000)})[:900]
    p = 1 / np.arange(1, len(words) + 1)
    p /= p.sum()

    def text():
        return " ".join(rng.choice(words, size=int(rng.integers(9, 20)), p=p))

    os.makedirs(root, exist_ok=True)
    paths = {"corpus": os.path.join(root, "corpus.jsonl"), "queries": os.path.join(root, "queries.jsonl"),
             "model": os.path.join(root, "model")}
    with open(paths["corpus"], "w") as f:
        for i in range(docs):
            f.write(json.dumps({"id": f"d{i}", "text": text()}) + "\n")
    with open(paths["queries"], "w") as f:
        for _ in range(queries):
            f.write(json.dumps({"text": text()}) + "\n")
    save_tiny(paths["model"], "gpt2", words, hidden=128, layers=2, heads=4)
    return paths


def measure(cmd: list[str], env: dict) -> dict:
    """Run cmd; wall seconds, VmHWM of the process itself (wait4) and the peak summed RSS of its
    process tree (sampled every 50 ms)."""
    import subprocess

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree, stop = [0], threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak_tree[0] = max(peak_tree[0], total)
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-4000:]}")
    return {"seconds": seconds, "tree_peak_mb": peak_tree[0] / 2**20, "stdout": out, "stderr": err}


def hwm_of(cmd: list[str], env: dict) -> dict:
    """measure(), plus the process's own VmHWM from getrusage of the waited child (its maximum RSS)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = measure(cmd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over waited children, kB
    out["hwm_mb"] = after / 1024 if after > before else float("nan")  # nan: an earlier child peaked higher
    return out


def whole_process(args) -> None:
    import shutil
    import sys

    import pyarrow.parquet as pq

    warnings.filterwarnings("ignore")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-ekfac-")
    if args.job:
        paths = dict(zip(("model", "corpus", "queries"), args.job))
        label = f"job {os.path.basename(args.job[0])} + {os.path.basename(args.job[1])}"
    else:
        paths = make_task(os.path.join(work, "task"), args.docs, args.queries)
        label = f"2-layer GPT-2 n_embd 128, {args.docs} docs of 10-20 tokens, {args.queries} queries"

    def count(path):
        with open(path) as f:
            return sum(1 for line in f if line.strip())

    n_docs, n_q = count(paths["corpus"]), count(paths["queries"])
    exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    here = os.path.dirname(os.path.abspath(__file__))
    rows = {}
    # the smaller peak first, so getrusage's running maximum still tells each child's own peak
    order = ["kronfluence", "bergson"]
    for name in order:
        if name == "bergson":
            index = os.path.join(work, "index")
            shutil.rmtree(index, ignore_errors=True)
            cmd = [exe, "ekfac", index, "--model", paths["model"], "--dataset", paths["corpus"], "--queries",
                   paths["queries"], "--mode", "exact", "--top-k", str(n_docs), "--no-progress"]
            if args.batch_tokens:
                cmd += ["--batch-tokens", str(args.batch_tokens)]
        else:
            cmd = [sys.executable, os.path.join(here, "kronfluence_ekfac.py"), paths["model"], paths["corpus"],
                   paths["queries"], os.path.join(work, "kronfluence.npy"), "--batch", str(args.batch)]
        rows[name] = hwm_of(cmd, env)
        print(f"{name}: {rows[name]['seconds']:.1f} s", flush=True)
    t = pq.read_table(os.path.join(work, "index", "scores", "queries-ekfac", "topk.parquet"),
                      columns=["query_index", "doc_index", "score"]).to_pandas()
    ours = np.full((n_q, n_docs), np.nan)
    ours[t.query_index, t.doc_index] = t.score
    ref = np.load(os.path.join(work, "kronfluence.npy"))
    pearson = float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1])
    picked = [line for line in rows["bergson"]["stdout"].splitlines() if "corpus gradients" in line]
    print(f"\n{label}; torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'whole process':<34}{'seconds':>9}{'VmHWM MB':>10}{'tree peak MB':>14}")
    for name, title in (("bergson", "bergson ekfac --mode exact"), ("kronfluence", "kronfluence 1.0.1 fit + pairwise")):
        r = rows[name]
        print(f"{title:<34}{r['seconds']:>9.1f}{r['hwm_mb']:>10.0f}{r['tree_peak_mb']:>14.0f}")
    print(f"time ratio bergson / kronfluence: {rows['bergson']['seconds'] / rows['kronfluence']['seconds']:.2f}")
    print(f"scores: Pearson {pearson:.6f}, Spearman {spearman(ours, ref):.6f} over {n_q} x {n_docs} pairs")
    if picked:
        print(" ".join(picked))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32, help="documents per batch (both tools)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each job (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-kronfluence", action="store_true")
    ap.add_argument("--whole-process", action="store_true", help="the issue-17 comparison (see above)")
    ap.add_argument("--job", nargs=3, metavar=("MODEL", "CORPUS", "QUERIES"), help="--whole-process on these files")
    ap.add_argument("--workdir", help="--whole-process: keep the task, index and scores here")
    ap.add_argument("--batch-tokens", type=int, default=0, help="--whole-process: bergson's --batch-tokens")
    args = ap.parse_args()
    if args.whole_process:
        if args.docs == 256 and args.queries == 16:  # the sizes unless given
            args.docs, args.queries = 1000, 100
        return whole_process(args)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = tiny_model("llama", args.vocab, seed=0, hidden=args.hidden, layers=args.layers, heads=4).requires_grad_(False)
    loaded = LoadedModel(model, _Tok(), torch.device("cpu"), torch.float32, threading.Lock())
    docs = corpus(args.docs, args.vocab, args.max_len, seed=1)
    queries = corpus(args.queries, args.vocab, args.max_len, seed=2)
    bt = args.batch * args.max_len
    proj = GradientOptions(projection_dim=16, include_bias=True)
    full = GradientOptions(projection_dim=0, include_bias=True)
    mods_p, mods_f = find_modules(model, [], [], True, 16), find_modules(model, [], [], True, 0)
    sp, sf = C.Space.of(proj), C.Space.of(full)
    n_params = sum(m.out_features * (m.in_features + m.has_bias) for m in mods_f)
    print(f"model: Llama h{args.hidden} x{args.layers} layers, {len(mods_f)} tracked modules, {n_params:,} tracked "
          f"weights; corpus {args.docs} docs <= {args.max_len} tokens, {args.queries} queries; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    compute_gradients(loaded, mods_p, docs[:8], proj, bt)  # warm-up
    rows, _ = compute_gradients(loaded, mods_p, docs, proj, bt)

    def fit_diag():
        return C.fit_preconditioner("diagonal", {"diagonal": C.diagonal_partial_stats(loaded, mods_f, docs, sf, batch_tokens=bt)})

    def fit_kfac():
        return C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(loaded, mods_f, docs, sf, batch_tokens=bt)})

    def fit_ekfac():
        kfac = fit_kfac()
        lam = C.lambda_partial_stats(loaded, mods_f, docs, kfac, batch_tokens=bt)
        return C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=kfac)

    def fit_autocorr():
        stats = C.autocorr_partial_stats(rows, C.layout(mods_p, sp), sp, unit_normalize=True)
        return C.fit_preconditioner("autocorr", {"autocorr": stats})

    jobs = {"gradient pass (p=16, reference)": lambda: compute_gradients(loaded, mods_p, docs, proj, bt),
            "diagonal (full, 1 pass)": fit_diag, "kfac (full, 1 pass + eigh)": fit_kfac,
            "ekfac (full, 2 passes + eigh)": fit_ekfac, "autocorr (p=16 rows, no pass)": fit_autocorr}
    if not args.skip_kronfluence:
        jobs["EK-FAC influence: bergson_core"] = lambda: ours_ekfac(loaded, mods_f, docs, queries, sf, full, bt)
        jobs["EK-FAC influence: kronfluence"] = lambda: kronfluence_ekfac(model, mods_f, docs, queries, args.batch)
    names = list(jobs)
    times: dict[str, list[float]] = {n: [] for n in names}
    results = {}
    for r in range(args.repeats):  # rotating order: machine noise hits every job alike
        for n in names[r % len(names):] + names[: r % len(names)]:
            results[n], t = timed(jobs[n])
            times[n].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    t_grad = med[names[0]]
    print(f"\nmedian of {args.repeats} runs, interleaved")
    print(f"{'fit':<34}{'seconds':>9}{'x gradient pass':>17}")
    for n in names[:5]:
        print(f"{n:<34}{med[n]:>9.2f}{med[n] / t_grad:>17.2f}")
    if args.skip_kronfluence:
        return
    ours, ref = results["EK-FAC influence: bergson_core"], results["EK-FAC influence: kronfluence"]
    t_ours, t_ref = med["EK-FAC influence: bergson_core"], med["EK-FAC influence: kronfluence"]
    pearson = float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1])
    print(f"\nEK-FAC fit + {args.queries}x{args.docs} scores (exact corpus gradients, empirical Fisher, damping 0.1 x mean)")
    print(f"{'tool':<20}{'seconds':>9}")
    print(f"{'bergson_core':<20}{t_ours:>9.2f}")
    print(f"{'kronfluence 1.0.1':<20}{t_ref:>9.2f}")
    print(f"wall-time ratio bergson_core / kronfluence: {t_ours / t_ref:.2f}")
    print(f"score agreement: Pearson {pearson:.6f}, Spearman {spearman(ours, ref):.6f}, "
          f"max |diff| / max |score| {np.abs(ours - ref).max() / np.abs(ref).max():.2e}")

if __name__ == "__main__":
    main()
