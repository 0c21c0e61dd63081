"""`bergson`: the command line front door. Each command validates its config, overlaps model
loading with the Prefect start-up, runs a flow, and prints a readable result.

A user error (bad option, missing file, mismatched index) is printed as one line on stderr with
exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bergson_core.config import BuildConfig, ScoreConfig
from bergson_core.errors import UserError

from .options import add_model_arguments, build_config, validate
from .startup import Background, quiet_prefect, start_prefect

COMMANDS = {
    "build": (BuildConfig, ("index",), "Compute per-document gradients of a corpus into an index."),
    "score": (ScoreConfig, ("index",), "Score queries against an index; write DIR/topk.parquet."),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bergson",
        description="Training-data attribution: which training documents drove a model's behaviour.",
    )
    p.add_argument("--verbose", action="store_true", help="Show Prefect's own logs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (model, positional, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_model_arguments(sp, model, positional)
    sp = sub.add_parser("inspect", help="Show an index's layout, sizes and health.")
    sp.add_argument("index", help="Index folder (local path or s3:// URL).")
    sp.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                    help="fsspec storage options for remote indexes.")
    sp.add_argument("--no-verify", action="store_true", help="Skip checksum verification of shards.")
    sp.add_argument("--json", action="store_true", help="Print the report as JSON.")
    sp = sub.add_parser("demo", help="Offline demo: tiny model + topical corpus, build, score, print top-k.")
    sp.add_argument("--workdir", default=".bergson-demo", help="Where the demo writes its files.")
    sp.add_argument("--projection-dim", type=int, default=16, help="Projection size p (default: 16).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_prefect(args.__dict__.pop("verbose"))
    try:
        return COMMAND_FUNCS[args.command](args)
    except UserError as e:
        print(f"bergson {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept and a rerun continues from them", file=sys.stderr)
        return 130


# -- commands -----------------------------------------------------------------------------------
def cmd_build(args) -> int:
    from . import render

    cfg = build_config(BuildConfig, args)
    result = run_build(cfg)
    render.build_summary(result)
    return 0


def run_build(cfg: BuildConfig) -> dict:
    from bergson_core.build import prepare_build

    pre = Background(lambda: prepare_build(cfg, write=False))  # validate + load while Prefect starts
    start_prefect()
    pre.result()
    from .build import build_index

    return build_index(cfg)


def cmd_score(args) -> int:
    from . import render

    cfg = build_config(ScoreConfig, args)
    result = run_score(cfg)
    render.topk(result)
    return 0


def run_score(cfg: ScoreConfig) -> dict:
    from bergson_core.score_run import ensure_query_gradients

    pre = Background(lambda: ensure_query_gradients(cfg))
    start_prefect()
    pre.result()
    from .score import score

    return score(cfg)


def cmd_inspect(args) -> int:
    from bergson_core.health import index_report
    from bergson_core.store import Index

    from . import render

    report = index_report(Index(args.index, args.storage_options), verify=not args.no_verify)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render.inspect(report)
    return 0 if report["healthy"] else 1


def cmd_demo(args) -> int:
    from bergson_core.demo import prepare_demo

    from . import render

    workdir = os.path.abspath(args.workdir)
    print(f"demo workspace: {workdir}")
    pre = Background(lambda: prepare_demo(workdir, log=lambda s, l: print(f"  training tiny model: step {s:4d} loss {l:.3f}")))
    start_prefect()
    paths = pre.result()
    build = validate(BuildConfig, {"index": paths["index"], "model": paths["model"], "dataset": paths["corpus"],
                                   "id_column": "id", "projection_dim": args.projection_dim, "shard_size": 100,
                                   "overwrite": True})
    render.build_summary(run_build(build))
    score = validate(ScoreConfig, {"index": paths["index"], "queries": paths["queries"], "top_k": 3})
    result = run_score(score)
    render.topk(result)
    print("Each query is about one topic; its top documents should be about the same topic "
          "(see the topic prefix of each doc id).")
    return 0


COMMAND_FUNCS = {"build": cmd_build, "score": cmd_score, "inspect": cmd_inspect, "demo": cmd_demo}

if __name__ == "__main__":
    sys.exit(main())
