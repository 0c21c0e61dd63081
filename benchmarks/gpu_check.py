"""GPU checks in one run, for a lent CUDA machine (no Prefect needed: plain bergson_core calls).

  1. hooks on CUDA: per-document gradient rows of tiny GPT-2 / Llama / NeoX in float64 on the GPU
     equal the CPU autograd reference (full rows) and the CPU rows (projected, p=16): the projection
     is generated on the CPU, so an index built on a GPU and queries taken on a CPU agree.
  2. bf16 / fp16 against fp32 on the GPU: cosine of the projected rows of a SmolLM2-shaped model.
  3. the pipeline on CUDA: `build` shards and an EK-FAC fit on the GPU equal the CPU's (float64).
  4. throughput: extraction (p=16) against a plain forward + backward on the same batches, for a
     SmolLM2-135M-shaped Llama (random weights) in bf16 and fp32, tokens/s and the ratio.

    python3 benchmarks/gpu_check.py --out DIR      # writes DIR/gpu_check.json, prints each result
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bergson_core.config import GradientOptions  # noqa: E402
from bergson_core.data.batching import collate, plan_batches  # noqa: E402
from bergson_core.data.corpus import Doc  # noqa: E402
from bergson_core.gradients.batch_budget import resolve_batch_tokens  # noqa: E402
from bergson_core.gradients.extract import compute_gradients  # noqa: E402
from bergson_core.model.loading import LoadedModel  # noqa: E402
from bergson_core.model.modules import find_modules  # noqa: E402
from bergson_core.model.tiny import ARCHS, save_tiny, train_tokenizer  # noqa: E402
from tests.core.helpers import QUERIES, TEXTS, docs_from_texts, make_loaded, reference_gradients  # noqa: E402

CUDA = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))  # cpu: a dry run of this script
RESULTS: dict = {}


def record(key: str, **values) -> None:
    RESULTS[key] = values
    print(json.dumps({key: values}), flush=True)


def rows(loaded: LoadedModel, docs: list[Doc], p: int, reduction: str = "sum", batch_tokens=None) -> np.ndarray:
    opts = GradientOptions(projection_dim=p, loss_reduction=reduction)
    modules = find_modules(loaded.model, opts.include, opts.exclude, opts.include_bias, p)
    out, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens)
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def on_cuda(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(loaded.model.to(CUDA), loaded.tokenizer, CUDA, loaded.dtype, threading.Lock())


def check_hooks() -> None:
    tok = train_tokenizer(TEXTS + QUERIES)
    docs = docs_from_texts(tok, TEXTS)
    for arch in ARCHS:
        cpu = make_loaded(arch, tok)
        full = GradientOptions(projection_dim=0)
        ref = reference_gradients(cpu, find_modules(cpu.model, full.include, full.exclude, False, 0), docs)
        cpu16 = rows(cpu, docs, 16)
        cpu_mean = rows(cpu, docs, 16, "mean")
        gpu = on_cuda(make_loaded(arch, tok))
        record(f"hooks_{arch}", full_vs_autograd=rel_err(rows(gpu, docs, 0), ref),
               projected_vs_cpu=rel_err(rows(gpu, docs, 16), cpu16),
               mean_vs_cpu=rel_err(rows(gpu, docs, 16, "mean"), cpu_mean),
               batch_of_3_vs_cpu=rel_err(rows(gpu, docs, 16, batch_tokens=40), cpu16))


def smollm_like(layers: int, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(CUDA, dtype).eval()
    model.requires_grad_(False)
    return model


def random_docs(n: int, seed: int = 0, lo: int = 64, hi: int = 512) -> list[Doc]:
    gen = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = gen.integers(3, 49152, size=int(gen.integers(lo, hi))).tolist()
        out.append(Doc(i, str(i), ids, list(ids)))
    return out


class _Tok:
    pad_token_id = 0


def check_low_precision() -> None:
    docs = random_docs(32, seed=1)
    ref = rows(LoadedModel(smollm_like(4, torch.float32), _Tok(), CUDA, torch.float32, threading.Lock()), docs, 16)
    for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        got = rows(LoadedModel(smollm_like(4, dt), _Tok(), CUDA, dt, threading.Lock()), docs, 16)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        record(f"precision_{name}", rows_dtype=str(got.dtype), finite=bool(np.isfinite(got).all()),
               cosine_min=float(cos.min()), cosine_mean=float(cos.mean()))


def _load_dir(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(glob.glob(os.path.join(path, "**", "*.safetensors"), recursive=True)):
        for k, v in load_file(f).items():
            out[f"{os.path.relpath(f, path)}:{k}"] = v
    return out


def check_pipeline() -> None:
    from bergson_core.config import BuildConfig
    from bergson_core.config.curvature import FitConfig
    from bergson_core.curvature.run import fit_in_process
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.index.store import Index, grad_matrix

    work = tempfile.mkdtemp()
    model = save_tiny(os.path.join(work, "model"), "llama", TEXTS + QUERIES)
    corpus = os.path.join(work, "c.jsonl")
    with open(corpus, "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": TEXTS[i % len(TEXTS)] + " " + TEXTS[(3 * i) % len(TEXTS)]}) + "\n")
    out = {}
    for key, dev in (("cpu", "cpu"), ("cuda", CUDA.type)):
        cfg = BuildConfig(index=os.path.join(work, key), model=model, dataset=corpus, shard_size=20, device=dev,
                          dtype="float64", grad_dtype="float32", projection_dim=8, progress=False)
        for shard in prepare_build(cfg).shards:
            build_shard(cfg, *shard)
        fit_in_process(FitConfig(index=cfg.index, strategy="ekfac", device=dev, dtype="float64", progress=False))
        idx = Index(cfg.index)
        out[key] = (np.concatenate([grad_matrix(idx.open_shard(s)) for s in range(3)]), _load_dir(os.path.join(cfg.index, "precond")))
    fit_err = max(rel_err(out["cuda"][1][k], v) for k, v in out["cpu"][1].items())
    record("pipeline", shards_rel_err=rel_err(out["cuda"][0], out["cpu"][0]), ekfac_tensors=len(out["cpu"][1]),
           ekfac_rel_err=fit_err, same_keys=sorted(out["cpu"][1]) == sorted(out["cuda"][1]))


def _sync() -> None:
    if CUDA.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def check_throughput(n_docs: int, layers: int) -> None:
    docs = random_docs(n_docs, seed=2)
    tokens = sum(len(d.input_ids) for d in docs)
    for name, dt in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model = smollm_like(layers, dt)
        loaded = LoadedModel(model, _Tok(), CUDA, dt, threading.Lock())
        budget = resolve_batch_tokens(model, [len(d.input_ids) for d in docs], None)
        batches = list(plan_batches([len(d.input_ids) for d in docs], budget))

        def train_step():
            model.requires_grad_(True)
            for b in batches:
                ids, mask, labels = collate([docs[i] for i in b], 0, CUDA)
                model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
                model.zero_grad(set_to_none=True)
            model.requires_grad_(False)

        rows(loaded, docs[:8], 16)  # warm-up (kernels, projection matrices)
        train_step()
        t_ours = _timed(lambda: rows(loaded, docs, 16))
        t_train = _timed(train_step)
        t_big = _timed(lambda: rows(loaded, docs, 16, batch_tokens=32768))  # would a higher cap pay?
        record(f"throughput_{name}", docs=n_docs, tokens=tokens, batch_tokens=budget, batches=len(batches),
               ours_tokens_per_s=round(tokens / t_ours), train_step_tokens_per_s=round(tokens / t_train),
               ours_over_train_time=round(t_ours / t_train, 3), ours_32k_batch_tokens_per_s=round(tokens / t_big),
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA.type == "cuda" else None)
        model = loaded = None  # freed before the next dtype
        if CUDA.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=30, help="of the throughput model (30: SmolLM2-135M)")
    args = ap.parse_args()
    name = torch.cuda.get_device_name(0) if CUDA.type == "cuda" else "cpu"
    record("device", gpu=name, torch=torch.__version__)
    checks = [check_hooks, check_low_precision] if CUDA.type == "cuda" else []  # fp16 on a CPU takes ages
    for check in (*checks, check_pipeline, lambda: check_throughput(args.docs, args.layers)):
        try:
            check()
        except Exception:
            record(getattr(check, "__name__", "throughput") + "_failed", error=traceback.format_exc()[-3000:])
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


if __name__ == "__main__":
    main()
