"""How large MAGIC's exact metagradients get as the training horizon grows, on the benchmark's
facts recipe (AdamW, warmup then linear decay) trained for EPOCHS epochs: max and median |dQ/dw| over
the first few queries. The growth with the number of steps is the training map's sensitivity.

    .venv/bin/python benchmarks/magic_horizon.py EPOCHS [float32|float64] [--queries 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs", type=int)
    parser.add_argument("dtype", nargs="?", default="float32", choices=["float32", "float64"])
    parser.add_argument("--queries", type=int, default=4)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bergson_core.config.eval import TrainOptions
    from bergson_core.data.corpus import load_corpus, tokenize_rows
    from bergson_core.eval.benchmark import BenchSetup, prepare_workspace
    from bergson_core.methods.magic.metagrad import metagradients

    torch.set_num_threads(1)
    setup = dataclasses.replace(BenchSetup(), epochs=args.epochs)
    paths = prepare_workspace(os.path.join(tempfile.mkdtemp(prefix="bergson-horizon-"), "ws"), setup)
    tok = AutoTokenizer.from_pretrained(paths["init"])
    corpus = load_corpus(paths["corpus"], "train", {})
    docs = tokenize_rows(corpus, 0, len(corpus), tok, 32, "text")
    qdocs = tokenize_rows(load_corpus(paths["queries"], "train", {}), 0, args.queries, tok, 32, "text", "prompt",
                          "completion")
    opts = TrainOptions(optimizer="adamw", lr=setup.lr, epochs=args.epochs, batch_size=setup.batch_size,
                        warmup_steps=setup.warmup_steps, train_loss="mean")
    model = AutoModelForCausalLM.from_pretrained(paths["init"]).to(getattr(torch, args.dtype)).eval()
    g, s = metagradients(model, docs, qdocs, opts, schedule="every", query_batch=args.queries,
                         pad_id=tok.pad_token_id or 0)
    print(json.dumps({"epochs": args.epochs, "steps": s.steps, "dtype": args.dtype, "max": g.abs().max().item(),
                      "median": g.abs().median().item(), "seconds": round(s.seconds, 1)}))


if __name__ == "__main__":
    main()
