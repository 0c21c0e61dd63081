"""Which training recipe keeps MAGIC's exact metagradients bounded on the benchmark's facts task?

One run per call: the benchmark's setup (216 documents, tiny GPT-2) with the optimizer options given
here overriding its recipe. Prints one JSON line with
  - how well training fits: mean per-token loss of the training documents and of the queries' answers;
  - max / median |dQ/dw| over the first --queries queries (the metagradient MAGIC scores with);
  - Adam's denominators at the end of training: the share of weights whose sqrt(v_hat) is below
    1e-6 / 1e-4 (d update / d gradient ~ 1 / (sqrt(v_hat) + eps), so tiny denominators amplify);
  - with --subsets K, a small LDS: Spearman, per query, between sum over kept documents of -dQ/dw and
    minus the query loss of a model retrained with the other documents' weights at 0, on K random subsets
    keeping --keep of the documents (the benchmark keeps half).

    .venv/bin/python benchmarks/magic_smoothness.py --eps 1e-8               # the benchmark's recipe
    .venv/bin/python benchmarks/magic_smoothness.py --setup smooth --subsets 16  # bergson benchmark --setup smooth
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="default", choices=["default", "smooth"],
                        help="The BenchSetup preset the options below override.")
    parser.add_argument("--eps", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--queries", type=int, default=4, help="Metagradients of the first N queries.")
    parser.add_argument("--subsets", type=int, default=0, help="Random half subsets retrained for a small LDS.")
    parser.add_argument("--keep", type=float, default=0.5, help="Share of documents each subset keeps.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bergson_core.config.eval import TrainOptions
    from bergson_core.data.corpus import load_corpus, tokenize_rows
    from bergson_core.eval.benchmark import BenchSetup, prepare_workspace
    from bergson_core.eval.lds import lds
    from bergson_core.eval.metrics import recall_at_k
    from bergson_core.methods.magic.metagrad import metagradients
    from bergson_core.train.trainer import evaluate_losses, train

    torch.set_num_threads(1)
    setup = BenchSetup.smooth() if args.setup == "smooth" else BenchSetup()
    over = {"eps": args.eps, "weight_decay": args.weight_decay, "lr": args.lr, "batch_size": args.batch_size,
            "epochs": args.epochs, "warmup_steps": args.warmup_steps}
    setup = dataclasses.replace(setup, **{k: v for k, v in over.items() if v is not None})
    # the corpus and init depend only on the data/model fields: one workspace per call is cheap (< 1 s)
    paths = prepare_workspace(os.path.join(tempfile.mkdtemp(prefix="bergson-smooth-"), "ws"), setup)
    tok = AutoTokenizer.from_pretrained(paths["init"])
    pad = tok.pad_token_id or 0
    corpus = load_corpus(paths["corpus"], "train", {})
    docs = tokenize_rows(corpus, 0, len(corpus), tok, 32, "text")
    queries = load_corpus(paths["queries"], "train", {})
    qdocs = tokenize_rows(queries, 0, len(queries), tok, 32, "text", "prompt", "completion")
    opts = TrainOptions(**setup.train_options())
    init = AutoModelForCausalLM.from_pretrained(paths["init"]).to(getattr(torch, args.dtype)).eval()

    def retrained(weights=None):
        m = copy.deepcopy(init).requires_grad_(True)
        final = {}
        res = train(m, docs, opts, weights=weights, pad_id=pad, after_step=lambda s, _m, st: final.update(st))
        return m, res, final

    model, res, state = retrained()
    bc2 = 1 - opts.beta2 ** res.steps
    den = torch.cat([(s["exp_avg_sq"] / bc2).sqrt().flatten() for s in state.values()]).double()
    den = den[den > 0]  # weights that never got a gradient (unused positions) never move
    out = {"recipe": {k: getattr(setup, k) for k in over},
           "steps": res.steps, "dtype": args.dtype,
           "train_loss": round(evaluate_losses(model, docs, pad, "cpu", "mean").mean().item(), 4),
           "query_loss": round(evaluate_losses(model, qdocs, pad, "cpu", "mean").mean().item(), 4),
           "denominator_median": float(f"{den.median().item():.3g}"),
           "denominator_below_1e-6": round((den < 1e-6).double().mean().item(), 4),
           "denominator_below_1e-4": round((den < 1e-4).double().mean().item(), 4)}
    g, stats = metagradients(init, docs, qdocs[:args.queries], opts, schedule="every", query_batch=args.queries,
                             pad_id=pad)
    out.update({"max": float(f"{g.abs().max().item():.3g}"), "median": float(f"{g.abs().median().item():.3g}"),
                "seconds": round(stats.seconds, 1)})
    ids = [str(i) for i in corpus.dataset["id"]]
    top = g.argsort(dim=1)[:, :10]  # the most negative dQ/dw = the highest score first
    out["recall@10"] = round(float(np.mean([recall_at_k([ids[i] for i in top[q]], queries.dataset["support_ids"][q], 10)
                                            for q in range(len(top))])), 3)
    if args.subsets:
        masks = (np.random.default_rng(0).random((args.subsets, len(docs))) < args.keep).astype(np.float64)
        losses = np.array([evaluate_losses(retrained(torch.from_numpy(k))[0], qdocs[:args.queries], pad, "cpu",
                                           "sum").numpy() for k in masks])  # [K, Q]
        r = lds(-g.double().numpy(), masks, losses)  # score = -dQ/dw, as `bergson magic` writes it
        out.update({"lds": round(r.mean, 3), "lds_stderr": round(r.stderr, 3)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
