"""MAGIC memory and time per checkpointing schedule on the benchmark's facts task.

One backward pass (the summed query loss) through the training run of the bundled benchmark's recipe
(bergson_core.eval.benchmark.BenchSetup: tiny GPT-2, AdamW, warmup then linear decay), for each
schedule: wall time, states held at the peak (and their bytes), forward steps (first pass plus
recomputation) and differentiated steps. The metagradients of all schedules must be identical.

    .venv/bin/python benchmarks/magic.py [--epochs 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="Epochs (the benchmark uses 20; 14 steps each).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--schedules", nargs="+", default=["every", "sqrt", "log"])
    args = parser.parse_args()

    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bergson_core.config.eval import TrainOptions
    from bergson_core.data.corpus import load_corpus, tokenize_rows
    from bergson_core.eval.benchmark import BenchSetup, prepare_workspace
    from bergson_core.methods.magic.metagrad import metagradients

    torch.set_num_threads(args.threads)
    setup = dataclasses.replace(BenchSetup(), epochs=args.epochs)
    paths = prepare_workspace(os.path.join(tempfile.mkdtemp(prefix="bergson-magic-"), "ws"), setup)
    tok = AutoTokenizer.from_pretrained(paths["init"])
    docs = tokenize_rows(load_corpus(paths["corpus"], "train", {}), 0, 216, tok, 32, "text")
    queries = load_corpus(paths["queries"], "train", {})
    qdocs = tokenize_rows(queries, 0, len(queries), tok, 32, "text", "prompt", "completion")
    opts = TrainOptions(optimizer="adamw", lr=setup.lr, epochs=setup.epochs, batch_size=setup.batch_size,
                        warmup_steps=setup.warmup_steps, train_loss="mean")
    model = AutoModelForCausalLM.from_pretrained(paths["init"]).eval()
    rows, first = [], None
    for schedule in args.schedules:
        grads, s = metagradients(model, docs, qdocs, opts, schedule=schedule, per_query=False,
                                 pad_id=tok.pad_token_id or 0)
        first = grads if first is None else first
        rows.append({"schedule": schedule, "steps": s.steps, "seconds": round(s.seconds, 2),
                     "peak_states": s.peak_states, "peak_state_MiB": round(s.peak_bytes / 2**20, 2),
                     "forward_steps": s.forward_steps, "backward_steps": s.backward_steps,
                     "identical_to_first": bool(torch.equal(grads, first))})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
