"""`bergson benchmark`: regenerate benchmarks/results.md (+ .parquet, .png) for every attribution
method the project has: LDS against a bank of retrained tiny models and recall@10 of known
supporting documents on a generated facts corpus, with standard errors and wall time. 2 CPU cores.

A method is a function that writes a score file (query_index, doc_index, score, rank, doc_id) for
the benchmark's queries against its corpus, named with @method and listed in methods(). To add a row, list it
there and rerun the command: the bank of retrained models is kept in --workdir, so only the new method
(and the quick re-evaluation of the others) runs.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Bench:
    """What a method gets: the files of the benchmark and helpers that run the project's flows."""

    workdir: str
    corpus: str
    queries: str
    model: str  # the model trained on every document: the one whose behaviour is attributed
    documents: int
    projection_dim: int

    def build_and_score(self, slug: str, build: dict | None = None, score: dict | None = None) -> str:
        """Build a fresh index of the corpus, score every query against every document; return the
        topk.parquet path."""
        from bergson_core.config import BuildConfig, ScoreConfig

        from . import launch

        index = os.path.join(self.workdir, "indexes", slug)
        out = os.path.join(self.workdir, "scores", slug)
        for folder in (index, out):
            shutil.rmtree(folder, ignore_errors=True)  # time the whole method, not a reuse
        bcfg = BuildConfig(**{"index": index, "model": self.model, "dataset": self.corpus, "id_column": "id",
                              "projection_dim": self.projection_dim, "loss_reduction": "mean",
                              "grad_dtype": "float32", "progress": False, **(build or {})})
        launch("build", bcfg)
        scfg = ScoreConfig(**{"index": index, "queries": self.queries, "query_prompt_column": "prompt",
                              "query_completion_column": "completion", "top_k": self.documents,
                              "output": out, "progress": False, **(score or {})})
        return launch("score", scfg)["output"]

    def write_scores(self, slug: str, scores) -> str:
        """Write a dense [queries, documents] score matrix as a score file."""
        import numpy as np
        import pyarrow as pa

        from bergson_core.index.build import open_corpus
        from bergson_core.scoring.results import write_table

        ids = [str(i) for i in open_corpus(self.corpus, "train", {}).dataset["id"]]
        order = np.argsort(-scores, axis=1, kind="stable")  # [Q, N]
        q = np.repeat(np.arange(scores.shape[0]), scores.shape[1])
        d = order.ravel()
        table = pa.table({"query_index": q, "rank": np.tile(np.arange(scores.shape[1]), scores.shape[0]),
                          "doc_index": d, "score": scores[q, d], "doc_id": [ids[i] for i in d]})
        return write_table(table, os.path.join(self.workdir, "scores", slug, "topk.parquet"))


def method(name: str, notes: str = ""):
    """Name a benchmark row: fn(bench) -> score file. Naming does not register it: methods() lists
    every row explicitly."""
    def name_row(fn):
        fn.bench_name, fn.bench_notes = name, notes
        return fn
    return name_row


def methods() -> dict[str, tuple[Callable[[Bench], str], str]]:
    """The benchmark's rows, in table order: the one explicit registry (the same list whichever
    modules were imported before). A new row: a function named with @method, added here."""
    from . import bench_dynamics as dyn
    from . import bench_estimators as est
    from . import benchmark_curvature as curv

    rows = [_random, _inner, _cosine, _inner_full, _cosine_full, dyn._tracin, dyn._source, dyn._magic,
            curv._trackstar, curv._ekfac, est._trak_final, est._trak_checkpoints, est._lissa, est._arnoldi]
    return {fn.bench_name: (fn, fn.bench_notes) for fn in rows}


def __getattr__(name: str):
    if name == "METHODS":  # the registry as a mapping, built on first use (after every row module loaded)
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@method("random scores", "baseline: N(0, 1) scores, seeded")
def _random(bench: Bench) -> str:
    import numpy as np

    from bergson_core.index.build import open_corpus

    queries = len(open_corpus(bench.queries, "train", {}))
    return bench.write_scores("random", np.random.default_rng(0).normal(size=(queries, bench.documents)))


@method("gradient inner product", "projected gradients (p x p per module), <g_q, g_d>")
def _inner(bench: Bench) -> str:
    return bench.build_and_score("inner", score={"metric": "inner"})


@method("gradient cosine (TrackStar-like)", "unit-normalised projected gradients; no optimizer "
        "normaliser or preconditioner yet")
def _cosine(bench: Bench) -> str:
    return bench.build_and_score("cosine", score={"metric": "cosine"})


@method("gradient inner product, p=0", "full per-module gradients, no projection")
def _inner_full(bench: Bench) -> str:
    return bench.build_and_score("inner-full", build={"projection_dim": 0}, score={"metric": "inner"})


@method("gradient cosine, p=0", "full per-module gradients, unit-normalised")
def _cosine_full(bench: Bench) -> str:
    return bench.build_and_score("cosine-full", build={"projection_dim": 0}, score={"metric": "cosine"})


def add_arguments(parser) -> None:
    parser.add_argument("--setup", default="default", choices=["default", "smooth"],
                        help="Training recipe: default (AdamW eps 1e-8) or smooth (the same task trained so that "
                        "MAGIC's metagradients stay bounded; its own workdir and table).")
    parser.add_argument("--workdir", help="Workspace: corpus, models, bank, indexes (default: .bergson-bench, "
                        ".bergson-bench-smooth with --setup smooth).")
    parser.add_argument("--output", help="Output stem: writes STEM.md, STEM.parquet, STEM.png (default: "
                        "benchmarks/results, benchmarks/results-smooth with --setup smooth).")
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="Only these methods (default: all).")
    parser.add_argument("--num-subsets", type=int, help="Retrained subsets (default: 32).")
    parser.add_argument("--subset-fraction", type=float, metavar="F",
                        help="Fraction of documents each retrained subset keeps (default: 0.5). Another fraction "
                        "gets its own workdir and table (suffix -keepNN): 0.95 measures small perturbations, the "
                        "regime first-order methods such as MAGIC linearise.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; tiny models train fastest on one).")
    parser.add_argument("--quick", action="store_true", help="A smoke-test size: seconds, meaningless numbers.")


def run(args) -> int:
    if args.subset_fraction is not None and not 0 < args.subset_fraction < 1:
        from bergson_core.errors import ConfigError

        raise ConfigError(f"--subset-fraction must be between 0 and 1, got {args.subset_fraction}")
    from bergson_core.eval.benchmark import table_tag

    suffix = table_tag(args.setup, args.subset_fraction)
    result = run_benchmark(args.workdir or f".bergson-bench{suffix}", args.output or f"benchmarks/results{suffix}",
                           args.methods, args.num_subsets, args.threads, args.quick, args.setup,
                           args.subset_fraction)
    with open(result["paths"]["markdown"]) as f:
        print(f.read())
    return 0


def run_benchmark(workdir: str, output: str, methods: list[str] | None = None, num_subsets: int | None = None,
                  threads: int = 1, quick: bool = False, setup_name: str = "default",
                  subset_fraction: float | None = None) -> dict:
    import dataclasses

    import torch

    from bergson_core.config.eval import RecallConfig, ValidateConfig
    from bergson_core.errors import ConfigError
    from bergson_core.eval.bank import FULL_RUN, Bank
    from bergson_core.eval.benchmark import (
        BenchSetup,
        prepare_workspace,
        scatter_name,
        table_tag,
        write_results,
    )
    from bergson_core.eval.retrain import full_model_path

    from . import launch

    t0 = time.perf_counter()
    registry = globals()["methods"]()  # the parameter `methods` shadows the function here
    unknown = sorted(set(methods or []) - set(registry))
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {sorted(registry)}")
    torch.set_num_threads(threads)
    if setup_name not in ("default", "smooth"):
        raise ConfigError(f"unknown setup {setup_name!r}; choose from ['default', 'smooth']")
    setup = BenchSetup.quick() if quick else BenchSetup()
    if setup_name == "smooth":
        setup = setup.smoothed()
    if num_subsets:
        setup = dataclasses.replace(setup, num_subsets=num_subsets)
    if subset_fraction is not None:
        setup = dataclasses.replace(setup, subset_fraction=subset_fraction)
    workdir = os.path.abspath(workdir)
    paths = prepare_workspace(workdir, setup)
    recipe = dict(bank=os.path.join(workdir, "bank"), model=paths["init"], dataset=paths["corpus"], id_column="id",
                  queries=paths["queries"], query_prompt_column="prompt", query_completion_column="completion",
                  max_length=32, **setup.train_options(), num_subsets=setup.num_subsets,
                  subset_fraction=setup.subset_fraction, overwrite=True)
    bank_only = launch("validate", ValidateConfig(**recipe))  # the full model and every retraining (kept if done)
    bench = Bench(workdir, paths["corpus"], paths["queries"], full_model_path(ValidateConfig(**recipe)),
                  bank_only["documents"], setup.projection_dim)
    chosen = [m for m in registry if not methods or m in methods]
    from bergson_core.config import ModelOptions
    from bergson_core.model.loading import load_model

    load_model(ModelOptions(model=bench.model))  # warm the model cache: no method pays the first load
    files, seconds = [], {}
    for name in chosen:
        t = time.perf_counter()
        files.append(registry[name][0](bench))
        seconds[name] = time.perf_counter() - t
    lds = launch("validate", ValidateConfig(**recipe, scores=files, names=chosen,
                                            output=os.path.join(workdir, "report")))
    recall = launch("recall", RecallConfig(queries=paths["queries"], scores=files, names=chosen, ks=[1, 10],
                                           output=os.path.join(workdir, "recall")))
    by_name = {m["method"]: m for m in recall["methods"]}
    rows = []
    for m in lds["methods"]:
        r = by_name[m["method"]]
        rows.append({"method": m["method"], "lds": m["lds"], "lds_stderr": m["lds_stderr"],
                     "recall@10": r["recall@10"], "recall@10_stderr": r["recall@10_stderr"], "mrr": r["mrr"],
                     "mrr_stderr": r["mrr_stderr"], "seconds": seconds[m["method"]],
                     "notes": registry[m["method"]][1]})
    full_manifest = Bank(recipe["bank"]).read_run(FULL_RUN)[1]
    command = "bergson benchmark" + (" --quick" if quick else "") + (
        f" --setup {setup_name}" if setup_name != "default" else "") + (
        f" --num-subsets {num_subsets}" if num_subsets else "") + (
        f" --subset-fraction {subset_fraction:g}" if subset_fraction is not None else "")
    info = {
        "command": command,
        "machine": f"{os.cpu_count()} CPU cores, {threads} torch thread(s), device {full_manifest.get('device')}",
        "documents": bank_only["documents"], "queries": bank_only["queries"], "people": setup.people,
        "attributes": len(setup.attributes), "subsets": setup.num_subsets, "fraction": setup.subset_fraction,
        "model": f"hidden {setup.hidden}, {setup.layers} layers, {setup.heads} heads",
        "recipe": f"AdamW lr {setup.lr}, eps {setup.eps:g}, weight decay {setup.weight_decay:g}, "
                  f"{setup.warmup_steps} warmup steps then linear decay, "
                  f"{setup.epochs} epochs, batch {setup.batch_size}, {full_manifest['steps']} steps",
        "setup": setup_name,
        "table": table_tag(setup_name, subset_fraction),
        "cost": lds["cost"], "full_seconds": full_manifest["seconds"],
        "retrained_now": bank_only["retrained_now"], "total_seconds": time.perf_counter() - t0,
    }
    out = write_results(rows, info, output)
    scatter = lds["paths"].get("scatter_plot")
    if scatter:
        shutil.copyfile(scatter, os.path.join(os.path.dirname(output) or ".", scatter_name(info["table"])))
    return {"rows": rows, "info": info, "paths": out}
