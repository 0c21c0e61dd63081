"""SOURCE variants on the bundled benchmark's run: segments, Adam vs SGD form, damping, horizon.

Needs the benchmark workspace with the SOURCE row's checkpoints (run `bergson benchmark --methods
"SOURCE (6 checkpoints, 3 segments)"` first). Each variant reuses the checkpoints, builds what it
needs under WORKDIR/source-variants/NAME, and is scored with the stored bank (no retraining):

    .venv/bin/python benchmarks/source_variants.py [--workdir .bergson-bench]
"""

from __future__ import annotations

import argparse
import os
import sys

VARIANTS = {  # name: SourceConfig overrides (select = checkpoint positions used)
    "adam, 3 segments": {"segments": 3},
    "adam, 6 segments": {"segments": 6},
    "adam, 1 segment of 6 checkpoints": {"segments": 1},
    "adam, last checkpoint only": {"select": [5]},
    "adam, 3 segments, damping 0.1": {"segments": 3, "damping": 0.1},
    "sgd, 3 segments": {"segments": 3, "optimizer": "sgd"},
    "sgd, last checkpoint, damping 0.1, eta 1e12 (= EK-FAC influence)":
        {"select": [5], "optimizer": "sgd", "damping": 0.1, "segment_learning_rates": [1e12]},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".bergson-bench")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from bergson_core.config.eval import ValidateConfig
    from bergson_core.config.source import SourceConfig
    from bergson_core.eval.bank import Bank
    from bergson_core.methods.source.run import run_source
    from flows.commands import launch

    work = os.path.abspath(args.workdir)
    run_dir = os.path.join(work, "source", "run")
    if not os.path.isdir(run_dir):
        print(f"no SOURCE checkpoints in {run_dir}: run `bergson benchmark --methods "
              "\"SOURCE (6 checkpoints, 3 segments)\"` first", file=sys.stderr)
        return 2
    checkpoints = sorted((os.path.join(run_dir, n) for n in os.listdir(run_dir)), key=lambda p: int(p.rsplit("-", 1)[1]))
    recipe = Bank(os.path.join(work, "bank")).meta()["recipe"]
    files = []
    for i, (name, over) in enumerate(VARIANTS.items()):
        over = dict(over)
        chosen = [checkpoints[k] for k in over.pop("select", range(len(checkpoints)))]
        cfg = SourceConfig(checkpoints=chosen, dataset=os.path.join(work, "corpus.jsonl"), id_column="id",
                           queries=os.path.join(work, "queries.jsonl"), query_prompt_column="prompt",
                           query_completion_column="completion", loss_reduction="mean", progress=False,
                           output=os.path.join(work, "source-variants", f"v{i}"), **over)
        files.append(run_source(cfg)["output"])
    keep = {k: v for k, v in recipe.items() if k in ValidateConfig.model_fields}
    report = launch("validate", ValidateConfig(**keep, bank=os.path.join(work, "bank"), scores=files,
                                               names=list(VARIANTS),
                                               output=os.path.join(work, "source-variants", "report")))
    print("| SOURCE variant | LDS | ± s.e. |\n|---|---|---|")
    for m in report["methods"]:
        print(f"| {m['method']} | {m['lds']:.3f} | {m['lds_stderr']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
