"""`bergson`'s subcommands, declared in one table (COMMANDS, in the order `bergson --help` lists them).

Most commands have one shape: flags generated from a pydantic config (flows/options.py), inputs
validated and the model loaded while Prefect starts (`preload`, in preload.py), then one flow run,
then its result printed (`render`, in show.py). Such a command is one row of the table. Commands
with their own flags and steps (inspect, status, deploy, demo, benchmark) keep a module with
`add_arguments(parser)` and `run(args) -> exit code`, named by their row.

From Python, `launch(name, config)` runs a command's flow exactly as the CLI does (preload while
Prefect starts, then the flow) and returns the flow's result.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.config.curvature import STRATEGY_NAMES, EkfacConfig, FitConfig, TrackstarConfig
from bergson_core.config.dynamics import MagicConfig, TracInConfig
from bergson_core.config.estimators import ArnoldiConfig, LissaConfig, TrakConfig
from bergson_core.config.eval import RecallConfig, ValidateConfig
from bergson_core.config.interop import ExportConfig, ImportConfig
from bergson_core.config.query import QueryConfig
from bergson_core.config.source import SourceConfig

from ..build_cli import launch_build
from ..query_cli import launch_query
from . import interop, preload, show


@dataclass(frozen=True)
class Command:
    """One subcommand. Either a flow command (config + flow, optionally preload / check / render) or
    a command with its own module (`module`: add_arguments(parser) and run(args))."""

    name: str
    help: str
    config: type[BaseModel] | None = None  # its fields are the flags, YAML keys and flow parameters
    positional: tuple[str, ...] = ()  # fields given as positional arguments (INDEX, BANK)
    flow: str = ""  # "module:function" of the flow, imported after Prefect has started
    preload: Callable[[Any], Any] | None = None  # validation and loading, run while Prefect starts
    check: Callable[[Any], Any] | None = None  # cheap checks run before Prefect starts (nothing to load)
    launcher: Callable[[Any], dict] | None = None  # replaces preload + flow (build's head start)
    render: Callable[[dict], None] | None = None  # prints the flow's result
    module: str = ""  # a command with its own flags and steps: flows.commands.<module>

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.module:
            self._module().add_arguments(parser)
        else:
            from ..options import add_model_arguments

            add_model_arguments(parser, self.config, positional=self.positional)

    def run(self, args: argparse.Namespace) -> int:
        """The CLI: flags (and --config YAML) -> config -> launch -> render; the exit status."""
        if self.module:
            return self._module().run(args)
        from ..options import build_config

        result = self.launch(build_config(self.config, args))
        if self.render:
            self.render(result)
        return 0

    def launch(self, cfg: BaseModel) -> dict:
        """Run the command's flow on a config exactly as the CLI does; returns the flow's result."""
        from ..startup import overlapped, start_prefect

        if self.launcher:
            return self.launcher(cfg)
        if self.check:  # fail fast, before Prefect starts
            self.check(cfg)
        if self.preload:
            overlapped(lambda: self.preload(cfg))
        else:
            start_prefect()
        module, function = self.flow.split(":")
        return getattr(importlib.import_module(module), function)(cfg)

    def _module(self):
        return importlib.import_module(f"{__name__}.{self.module}")


COMMANDS: tuple[Command, ...] = (
    Command("build", "Compute per-document gradients of a corpus into an index (local path or s3:// URL).",
            BuildConfig, ("index",), flow="flows.build:build_index", launcher=launch_build, render=show.build),
    Command("plan", "What `bergson build` with the same options would compute and cost, before it runs: documents, "
            "tokens, shards, store bytes, time per shard from a timed calibration batch, total time, and the cost "
            "with --price-per-hour (also a dashboard artifact). Same as `bergson build --dry-run`.",
            BuildConfig, ("index",), flow="flows.plan:plan", preload=preload.plan, render=show.plan),
    Command("score", "Score queries against an index; write DIR/topk.parquet (query_index, rank, doc_index, score, "
            "doc_id, text).",
            ScoreConfig, ("index",), flow="flows.score:score", preload=preload.score, render=show.topk),
    Command("query", "Ask an index which documents are behind prompts (--text, --queries, or standard input one per "
            "line, the model loaded once): top-k and --bottom-k documents, exactly or from a FAISS index (--faiss); "
            "writes OUTPUT/query.parquet.",
            QueryConfig, ("index",), flow="flows.query:query", launcher=launch_query, render=show.query),
    Command("fit", f"Fit a preconditioner over an index ({', '.join(STRATEGY_NAMES)}): per-shard statistics, reduced, "
            "fitted in float64, saved as INDEX/precond/NAME for `bergson score --preconditioner`.",
            FitConfig, ("index",), flow="flows.fit:fit", preload=preload.fit, render=show.fit),
    Command("trackstar", "TrackStar in one command: build an index of projected gradients (Adam/Adafactor-normalised "
            "with --optimizer-state), fit the unit-normalised gradient covariance of corpus and queries, score cosine "
            "similarity of H^-1/2-preconditioned gradients; writes OUTPUT/topk.parquet.",
            TrackstarConfig, ("index",), flow="flows.trackstar:trackstar", preload=preload.trackstar,
            render=show.topk),
    Command("ekfac", "EK-FAC influence in one command: fit EK-FAC over the corpus, precondition the query gradients, "
            "score them against the corpus gradients (inner products, kronfluence's sign). --mode exact recomputes "
            "full, unprojected corpus gradients (the default for small corpora); --mode projected scores through a "
            "randomly projected index and is an APPROXIMATION of the exact scores. Writes OUTPUT/topk.parquet.",
            EkfacConfig, ("index",), flow="flows.ekfac:ekfac", preload=preload.ekfac, render=show.ekfac),
    Command("export", "Write an index in Bergson 2.5.1's on-disk layout (gradients.bin, info.json, data.hf, "
            "processor_config.yaml) for Bergson's Attributor; query gradients must come from this project.",
            ExportConfig, ("index", "output"), launcher=interop.export, render=interop.show),
    Command("import", "Read a Bergson 2.5.1 index folder (or one `bergson export` wrote) into a new index here.",
            ImportConfig, ("source", "index"), launcher=interop.import_, render=interop.show),
    Command("inspect", "Show an index's layout, sizes and health; exit 1 when shards are missing or corrupt.",
            module="inspect"),
    Command("status", "What an index holds: complete / missing / corrupt shards, scores, preconditioners; exit 1 if "
            "incomplete.", module="status"),
    Command("validate", "LDS of score files: retrain on subsets (a stored, reusable bank of query losses) and "
            "correlate.",
            ValidateConfig, ("bank",), flow="flows.validate:validate", preload=preload.validate,
            render=show.validate),
    Command("recall", "MRR and recall@k of each query's known supporting documents in score files' rankings.",
            RecallConfig, flow="flows.recall:recall", check=preload.recall, render=show.recall),
    Command("deploy", "Register work pool, result storage, gpu concurrency limit and deployments with a Prefect "
            "server.", module="deploy"),
    Command("tracin", "TracIn over training checkpoints: sum_k lr_k <g_q, g_d> from one index per checkpoint; writes "
            "DIR/topk.parquet (usable by `bergson validate`).",
            TracInConfig, flow="flows.tracin:tracin", preload=preload.tracin, render=show.tracin),
    Command("magic", "MAGIC: exact gradient of each query's loss after training w.r.t. every document's (or token's) "
            "weight, by reverse-mode through the optimizer steps; writes DIR/topk.parquet (usable by `bergson "
            "validate`).",
            MagicConfig, flow="flows.magic:magic", preload=preload.magic, render=show.magic),
    Command("source", "SOURCE: approximate unrolling over training checkpoints grouped in segments (per-segment "
            "EK-FAC, the query carried back through the segments); writes DIR/topk.parquet (usable by `bergson "
            "validate`).",
            SourceConfig, flow="flows.source:source", preload=preload.source, render=show.source),
    Command("trak", "TRAK over an ensemble of models (one index each, e.g. checkpoints or independently trained "
            "models): 1 - p reweighting, (Phi^T Phi + lambda I)^-1 per model in the projected space, scores averaged; "
            "writes DIR/topk.parquet (usable by `bergson validate`).",
            TrakConfig, flow="flows.trak:trak", check=preload.trak, render=show.trak),
    Command("lissa", "LiSSA influence: (H + lambda I)^-1 on the query gradients by the LiSSA recursion with Gauss-Newton "
            "or Hessian-vector products through the index's model (convergence reported), scored against the index "
            "(full gradients with --projection-dim 0, else through its projection); writes DIR/topk.parquet.",
            LissaConfig, ("index",), flow="flows.lissa:lissa", preload=preload.second_order, render=show.lissa),
    Command("arnoldi", "Arnoldi influence: the top-r eigenpairs of the Gauss-Newton matrix or Hessian by Arnoldi "
            "iteration with curvature-vector products, the query gradients inverted in their span, scored against "
            "the index; writes DIR/topk.parquet.",
            ArnoldiConfig, ("index",), flow="flows.arnoldi:arnoldi", preload=preload.second_order,
            render=show.arnoldi),
    Command("demo", "Offline demo: tiny model + topical corpus, build, score, print the top documents per query.",
            module="demo"),
    Command("benchmark", "Regenerate the bundled results table (LDS, recall@10, wall time per method) on a tiny facts "
            "task.", module="benchmark"),
)

BY_NAME = {c.name: c for c in COMMANDS}


def launch(name: str, cfg: BaseModel) -> dict:
    """Run command `name`'s flow on `cfg` as the CLI does (preload while Prefect starts, then the
    flow); returns the flow's result. E.g. launch("score", ScoreConfig(index=..., queries=...))."""
    return BY_NAME[name].launch(cfg)
