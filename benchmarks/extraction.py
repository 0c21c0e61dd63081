"""Extraction throughput against a plain training step and the activation-gradient floor.

On one model and one fixed list of batches (token-budget batches of random documents, planned and
padded exactly as `compute_gradients` does), this times, interleaved and repeated:

  extract p=16   bergson_core.gradients.extract.compute_gradients with projection_dim=16 (hooks fold the
                 two-sided projection in; includes collation and the copy of the rows to numpy)
  extract p=0    the same with full per-module gradients (reference only; no target)
  plain          forward + loss.backward() with requires_grad=True parameters (weight .grad
                 materialised, zeroed after each batch), as in a training step without optimizer
  floor          forward + backward with frozen parameters and only the embedding output requiring
                 grad: activation gradients, no weight gradients. Per-document projected gradients
                 need at least this work, so it is the floor extraction can reach.

How to read it: tokens/s counts real (non-padding) tokens. The methods take turns batch by batch
(order rotating), so load from other processes hits them alike; the first table gives medians over
repeats of the wall-clock and process CPU time of a pass over all batches. A ratio is of tokens/s
(>1: the numerator method is faster); the main figure is the median of the per-repeat ratios, the
one in brackets the ratio of the medians. Wall clock is what a user sees; CPU time (with
--threads 1) is the steadiest on a shared machine. Target (issue 2): extract p=16 / floor >= 0.90.
`--profile` adds the share of the hook bodies and a torch.profiler table for one extraction pass;
`--proposed` adds two rows with a faster loss (contiguous_losses) to size that change;
`--threads 1` gives the steadiest ratios when other processes share the cores (CPU-time columns).

    .venv/bin/python benchmarks/extraction.py            # tiny GPT-2 and a ~7M-parameter Llama
    .venv/bin/python benchmarks/extraction.py --quick    # fewer batches and repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bergson_core.config import GradientOptions
from bergson_core.data.batching import collate, plan_batches
from bergson_core.data.corpus import Doc
from bergson_core.gradients import capture
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.model.loading import LoadedModel
from bergson_core.model.loss import document_losses
from bergson_core.model.tiny import tiny_model


@dataclass
class Case:
    name: str
    arch: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    seq: int
    batch_tokens: int
    docs: int


CASES = {
    "tiny": Case("tiny GPT-2 (h64, 2 layers, vocab 2k, seq 128)", "gpt2", 2048, 64, 2, 2, 128, 4096, 256),
    "small": Case("Llama (h256, 4 layers, vocab 8k, seq 256)", "llama", 8192, 256, 4, 4, 256, 4096, 48),
}


class _Tok:
    pad_token_id = 0


def make_docs(case: Case, n: int, seed: int = 0) -> list[Doc]:
    """Random documents with lengths between seq/2 and seq (so batches carry some padding)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        length = int(rng.integers(case.seq // 2, case.seq + 1))
        ids = rng.integers(3, case.vocab, size=length).tolist()
        docs.append(Doc(i, str(i), ids, list(ids)))
    return docs


def fwd_bwd(model, batches, loss_fn=document_losses) -> None:
    """One forward + summed-loss backward per batch (what plain and floor both run)."""
    for ids, mask, labels in batches:
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss_fn(logits, labels).sum().backward()


def run_plain(model, batches) -> None:
    model.requires_grad_(True)
    try:
        fwd_bwd(model, batches)
        model.zero_grad(set_to_none=True)  # per-step cost of a training loop, once per pass
    finally:
        model.requires_grad_(False)


def run_floor(model, batches, loss_fn=document_losses) -> None:
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        fwd_bwd(model, batches, loss_fn)
    finally:
        handle.remove()


def run_extract(loaded, modules, docs, opts, batch_tokens, loss_fn=None) -> None:
    """compute_gradients; with loss_fn, its loss taken from the full logits instead of the chunked head."""
    if loss_fn is None:
        compute_gradients(loaded, modules, docs, opts, batch_tokens)
        return
    saved = capture.hooked_losses  # GradientCollector.run_batch looks it up at call time

    def full_logits(model, ids, mask, labels, reduction="sum"):
        return loss_fn(model(input_ids=ids, attention_mask=mask).logits, labels, reduction)

    capture.hooked_losses = full_logits
    try:
        compute_gradients(loaded, modules, docs, opts, batch_tokens)
    finally:
        capture.hooked_losses = saved


def contiguous_losses(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Proposed document_losses: shift the targets instead of the logits (last position gets -100),
    so cross-entropy runs on contiguous [B*T, V] rows instead of a transposed [B, V, T-1] copy.
    The same numbers up to float rounding."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    bsz, width, vocab = logits.shape
    target = torch.cat([labels[:, 1:], labels.new_full((bsz, 1), -100)], dim=1)  # [B, T]
    tok = F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1), ignore_index=-100, reduction="none")
    total = tok.view(bsz, width).sum(dim=1)  # [B]
    if reduction == "mean":
        total = total / (target != -100).sum(dim=1).clamp(min=1)
    return total


RATIOS = [  # (label, numerator method, denominator method): a ratio of tokens/s = time(num)/time(den)
    ("extract p=16 / floor", "floor (act-grad only)", "extract p=16"),
    ("extract p=16 / plain", "plain fwd+bwd", "extract p=16"),
    ("extract p=0 / floor", "floor (act-grad only)", "extract p=0"),
    ("floor / plain", "plain fwd+bwd", "floor (act-grad only)"),
]


def bench_case(case: Case, n_docs: int, repeats: int, profile: bool, proposed: bool) -> None:
    model = tiny_model(case.arch, case.vocab, hidden=case.hidden, layers=case.layers, heads=case.heads,
                       max_positions=case.seq, bias=False)
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    loaded = LoadedModel(model, _Tok(), torch.device("cpu"), torch.float32, threading.Lock())
    docs = make_docs(case, n_docs)
    plan = plan_batches([len(d.input_ids) for d in docs], case.batch_tokens)
    batches = [collate([docs[i] for i in b], 0, "cpu") for b in plan]
    groups = [[docs[i] for i in b] for b in plan]
    tokens = sum(int(m.sum()) for _, m, _ in batches)
    padded = sum(m.numel() for _, m, _ in batches)
    o16, o0 = GradientOptions(projection_dim=16), GradientOptions(projection_dim=0)
    m16, m0 = tracked_modules(loaded, o16), tracked_modules(loaded, o0)

    # one timing unit = one method on one batch; the methods take turns on each batch (order
    # rotating), so a load spike from other processes hits them all alike
    methods = {
        "extract p=16": lambda j: run_extract(loaded, m16, groups[j], o16, case.batch_tokens),
        "extract p=0": lambda j: run_extract(loaded, m0, groups[j], o0, case.batch_tokens),
        "plain fwd+bwd": lambda j: run_plain(model, batches[j : j + 1]),
        "floor (act-grad only)": lambda j: run_floor(model, batches[j : j + 1]),
    }
    if proposed:  # the same two with contiguous_losses in place of capture.document_losses
        methods["extract p=16, new loss"] = lambda j: run_extract(
            loaded, m16, groups[j], o16, case.batch_tokens, contiguous_losses)
        methods["floor, new loss"] = lambda j: run_floor(model, batches[j : j + 1], contiguous_losses)
    print(f"\n## {case.name}: {n_params / 1e6:.2f}M parameters, {len(m16)} tracked modules, "
          f"{len(docs)} docs, {len(batches)} batches of <= {case.batch_tokens} tokens, {tokens} tokens "
          f"({padded} padded), {repeats} repeats")
    for fn in methods.values():  # warm-up: allocator, projection matrices, kernels
        fn(0)
    names = list(methods)
    wall = {k: [0.0] * repeats for k in names}
    cpu = {k: [0.0] * repeats for k in names}
    step = 0
    for r in range(repeats):
        for j in range(len(batches)):
            step += 1
            for k in names[step % len(names):] + names[: step % len(names)]:
                w0, c0 = time.perf_counter(), time.process_time()
                methods[k](j)
                wall[k][r] += time.perf_counter() - w0
                cpu[k][r] += time.process_time() - c0
    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"| {'method':<26} | {'wall s':>7} | {'tokens/s':>9} | {'CPU s':>7} | {'tokens/CPU-s':>12} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 14}|")
    for k in names:
        print(f"| {k:<26} | {mw[k]:>7.3f} | {tokens / mw[k]:>9,.0f} | {mc[k]:>7.3f} | {tokens / mc[k]:>12,.0f} |")
    print("\nratios of tokens/s: median over repeats of the per-repeat ratio (ratio of the medians)")
    print(f"| {'ratio':<26} | {'wall clock':>15} | {'CPU time':>15} |")
    print(f"|{'-' * 28}|{'-' * 17}|{'-' * 17}|")
    for label, num, den in RATIOS:
        cells = []
        for t, m in ((wall, mw), (cpu, mc)):
            paired = statistics.median([a / b for a, b in zip(t[num], t[den])])
            cells.append(f"{paired:.3f} ({m[num] / m[den]:.3f})")
        print(f"| {label:<26} | {cells[0]:>15} | {cells[1]:>15} |")
    if proposed:
        for label, num, den in [("new loss: extract / floor", "floor, new loss", "extract p=16, new loss"),
                                ("extract, new / old loss", "extract p=16", "extract p=16, new loss"),
                                ("floor, new / old loss", "floor (act-grad only)", "floor, new loss")]:
            cells = [f"{statistics.median([a / b for a, b in zip(t[num], t[den])]):.3f} ({m[num] / m[den]:.3f})"
                     for t, m in ((wall, mw), (cpu, mc))]
            print(f"| {label:<26} | {cells[0]:>15} | {cells[1]:>15} |")
    pw = statistics.median([a / b for a, b in zip(wall["floor (act-grad only)"], wall["extract p=16"])])
    pc = statistics.median([a / b for a, b in zip(cpu["floor (act-grad only)"], cpu["extract p=16"])])
    print(f"target extract p=16 >= 0.90 x floor: wall {'MET' if pw >= 0.9 else 'MISSED'} ({pw:.3f}), "
          f"CPU time {'MET' if pc >= 0.9 else 'MISSED'} ({pc:.3f})")
    if profile:
        profile_extract(loaded, m16, docs, o16, case.batch_tokens)


def profile_extract(loaded, modules, docs, opts, batch_tokens) -> None:
    """Where extraction's time goes: the hook bodies (per-module projection) vs everything else,
    then torch.profiler's top operators for one pass."""
    from torch.profiler import ProfilerActivity, profile

    from bergson_core.gradients import capture

    original = capture.GradientCollector._backward
    spent = [0.0]

    def timed(self, info, g):
        t0 = time.process_time()
        original(self, info, g)
        spent[0] += time.process_time() - t0

    capture.GradientCollector._backward = timed
    try:
        c0 = time.process_time()
        run_extract(loaded, modules, docs, opts, batch_tokens)
        total = time.process_time() - c0
    finally:
        capture.GradientCollector._backward = original
    print(f"\nhook bodies (projection + per-document products): {spent[0]:.3f} of {total:.3f} CPU s "
          f"({spent[0] / total:.1%}) of one extraction pass (p={opts.projection_dim})")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_extract(loaded, modules, docs, opts, batch_tokens)
    print("torch.profiler, one extraction pass, top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer documents and repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--profile", action="store_true", help="also profile one extraction pass")
    ap.add_argument("--proposed", action="store_true",
                    help="also time extract p=16 and the floor with contiguous_losses (a proposed faster "
                    "document_losses), to size that change")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice, all cores); 1 is the least "
                    "sensitive to other processes on a busy machine")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores, "
          f"load average before start {os.getloadavg()[0]:.1f}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5 and torch.get_num_threads() > 1:
        print("note: other processes keep the cores busy, and every multi-threaded op can stall while one of "
              "its threads waits for a core; the CPU-time columns of a --threads 1 run are steadier")
    for name in args.cases:
        case = CASES[name]
        n = case.docs // 2 if args.quick else case.docs
        bench_case(case, n, repeats, args.profile, args.proposed)


if __name__ == "__main__":
    main()
