"""`bergson plan` (and `bergson build --dry-run`): what a build will do and cost, before it runs.

The plan is the build's own: the same validation and shard list (prepare_build without writing;
with --append only the new shards), so its counts are the ones the build then reports. Tokens are
counted by tokenising every document to compute (or a sample of them, scaled up, past
--plan-sample documents); store bytes are exact (an Arrow file's size follows from its row count,
its ids and its width: the gradient buffer is padded to 8 bytes); time comes from a calibration
batch run twice on the chosen device, the second timed.
"""

from __future__ import annotations

import random
import time

import numpy as np

from ..config import BuildConfig
from .append import index_docs
from .build import load_for_spec, open_normalizers, prepare_build
from .store import encode_grads


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def shard_bytes(start: int, doc_ids: list[str], width: int, dtype: str) -> int:
    """Bytes of the Arrow file of a shard, without its gradients: the file at width 1, plus the
    difference of the two (8-byte padded) gradient buffers."""
    n, k = len(doc_ids), (2 if dtype == "float16" else 4)
    one = len(encode_grads(start, doc_ids, [0] * n, np.zeros((n, 1), np.float32), dtype)[0])
    return one - _pad8(n * k) + _pad8(n * width * k)


def _calibrate(cfg: BuildConfig, loaded, modules, docs: list) -> float:
    """Seconds per token of the gradient pass on `docs` (a warm-up run, then a timed one)."""
    from ..gradients.extract import compute_gradients

    normalizers = open_normalizers(cfg, loaded, modules)
    compute_gradients(loaded, modules, docs, cfg, cfg.batch_tokens, normalizers=normalizers)
    t0 = time.perf_counter()
    _, stats = compute_gradients(loaded, modules, docs, cfg, cfg.batch_tokens, normalizers=normalizers)
    return (time.perf_counter() - t0) / max(stats.tokens, 1)


def plan_build(cfg: BuildConfig) -> dict:
    """Documents, tokens, shards, store bytes, time per shard, total time and cost of `cfg`'s build."""
    plan = prepare_build(cfg, write=False)
    todo = plan.missing()
    loaded, modules, _ = load_for_spec(cfg)
    width = plan.meta["row_width"]
    docs_total = sum(stop - start for _, start, stop in todo)
    sample = set(range(len(todo)))
    if docs_total > cfg.plan_sample:  # tokenise whole shards, picked at random, and scale up
        per = max(1, round(len(todo) * cfg.plan_sample / docs_total))
        sample = set(random.Random(0).sample(range(len(todo)), per))
    tokens = counted = 0
    nbytes = 0
    calib: list = []
    for i, (shard, start, stop) in enumerate(todo):
        docs = index_docs(plan.meta, cfg, loaded.tokenizer, start, stop) if i in sample else None
        if docs is not None:
            live = [d for d in docs if d.num_loss_tokens > 0]
            tokens += sum(len(d.input_ids) for d in live)
            counted += stop - start
            if not calib:
                calib = live[: cfg.calibration_documents]
        ids = [d.doc_id for d in docs] if docs is not None else _ids(plan.meta, cfg, start, stop)
        nbytes += shard_bytes(start, ids, width, cfg.grad_dtype)
    exact = counted == docs_total
    if not exact:
        tokens = round(tokens * docs_total / max(counted, 1))
    per_token = _calibrate(cfg, loaded, modules, calib) if calib else 0.0
    seconds = tokens * per_token
    out = {
        "index": cfg.index, "append": cfg.append, "documents": docs_total, "tokens": tokens,
        "tokens_exact": exact, "shards": len(todo), "shards_total": len(plan.shards),
        "bytes": nbytes, "row_width": width, "grad_dtype": cfg.grad_dtype, "device": str(loaded.device),
        "calibration_documents": len(calib), "calibration_tokens_per_second": 1 / per_token if per_token else 0.0,
        "seconds_per_shard": seconds / len(todo) if todo else 0.0, "seconds": seconds,
        "price_per_hour": cfg.price_per_hour,
        "cost": seconds / 3600 * cfg.price_per_hour if cfg.price_per_hour is not None else None,
    }
    out["markdown"] = markdown(out)
    return out


def _ids(meta: dict, cfg: BuildConfig, start: int, stop: int) -> list[str]:
    """Document ids of rows not tokenised (sampled plans): the id column, or the row numbers."""
    if not cfg.id_column:
        return [str(i) for i in range(start, stop)]
    from .append import segment_corpus

    corpus, shift = segment_corpus(meta, start, cfg.storage_options)
    return [str(v) for v in corpus.dataset.select(range(start - shift, stop - shift))[cfg.id_column]]


def markdown(p: dict) -> str:
    cost = f"{p['cost']:,.2f} at {p['price_per_hour']:,.2f} per hour" if p["cost"] is not None else "(give --price-per-hour)"
    rows = [("documents to compute", f"{p['documents']:,}"),
            ("tokens", f"{p['tokens']:,}" + ("" if p["tokens_exact"] else " (estimated from a sample)")),
            ("shards to compute", f"{p['shards']:,} of {p['shards_total']:,}"),
            ("store bytes", f"{p['bytes']:,} ({p['bytes'] / 2**20:,.1f} MiB)"),
            ("calibration", f"{p['calibration_documents']} documents on {p['device']}, "
                            f"{p['calibration_tokens_per_second']:,.0f} tokens/s"),
            ("time per shard", f"{p['seconds_per_shard']:,.1f} s"),
            ("compute time", f"{p['seconds']:,.1f} s ({p['seconds'] / 3600:,.2f} h), one replica"),
            ("cost", cost)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# Build plan for `{p['index']}`\n\n| what | estimate |\n|---|---|\n{table}\n"
