"""Overhead of the train-time gradient store: training time with the store / without it.

The benchmark's facts task (bergson_core.eval.benchmark.BenchSetup: tiny GPT-2, AdamW, linear decay),
trained twice from the same init with the project's trainer: once plain, once with a GradientStore
writing a projected, Adam-normalised index of the whole corpus at every `--every` steps (and the last
step). Both runs save the same checkpoints, so the ratio is the store's cost alone.

    .venv/bin/python benchmarks/train_callback.py [--every 50] [--epochs 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=50, help="Store (and checkpoint) every N optimizer steps.")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs (default: the benchmark's).")
    parser.add_argument("--projection-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="Alternate plain/store runs this many times.")
    args = parser.parse_args()

    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bergson_core.config import BuildConfig
    from bergson_core.config.eval import TrainOptions
    from bergson_core.data.corpus import load_corpus, tokenize_rows
    from bergson_core.eval.benchmark import BenchSetup, prepare_workspace
    from bergson_core.train.callback import GradientStore
    from bergson_core.train.trainer import total_steps, train

    torch.set_num_threads(args.threads)
    setup = BenchSetup() if args.epochs is None else dataclasses.replace(BenchSetup(), epochs=args.epochs)
    work = tempfile.mkdtemp(prefix="bergson-cb-")
    paths = prepare_workspace(os.path.join(work, "ws"), setup)
    tok = AutoTokenizer.from_pretrained(paths["init"])
    corpus = load_corpus(paths["corpus"], "train", {})
    docs = tokenize_rows(corpus, 0, len(corpus), tok, 32, "text")
    opts = TrainOptions(optimizer="adamw", lr=setup.lr, epochs=setup.epochs, batch_size=setup.batch_size,
                        warmup_steps=setup.warmup_steps, train_loss="mean", checkpoint_every=args.every)
    steps = total_steps(len(docs), opts)

    def run(with_store: bool) -> tuple[float, float]:
        folder = os.path.join(work, "store" if with_store else "plain")
        shutil.rmtree(folder, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(paths["init"]).eval()
        store = None
        if with_store:
            cfg = BuildConfig(index=os.path.join(folder, "grads"), model=paths["init"], dataset=paths["corpus"],
                              max_length=32, projection_dim=args.projection_dim, loss_reduction="mean",
                              grad_dtype="float16", device="cpu", progress=False)
            store = GradientStore(cfg, tok, every=args.every, last_step=steps,
                                  checkpoint_dir=os.path.join(folder, "run"))
        t0 = time.perf_counter()
        train(model, docs, opts, pad_id=tok.pad_token_id or 0, checkpoint_dir=os.path.join(folder, "run"),
              tokenizer=tok, after_step=store.after_step if store else None)
        return time.perf_counter() - t0, store.seconds if store else 0.0

    plain, with_store, store_seconds = [], [], []
    for _ in range(args.repeats):
        plain.append(run(False)[0])
        t, s = run(True)
        with_store.append(t)
        store_seconds.append(s)
    writes = len([s for s in range(1, steps + 1) if s % args.every == 0 or s == steps])
    result = {"documents": len(docs), "steps": steps, "stores_written": writes, "every": args.every,
              "projection_dim": args.projection_dim, "threads": args.threads,
              "train_seconds_plain": min(plain), "train_seconds_with_store": min(with_store),
              "store_seconds": min(store_seconds), "ratio": min(with_store) / min(plain)}
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
