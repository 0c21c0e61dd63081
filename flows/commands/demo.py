"""`bergson demo`: offline, a few minutes on 2 CPU cores. Trains a tiny GPT-2 on a generated
topical corpus, builds an index, scores one query per topic and prints the top documents."""

import os

from bergson_core.config import BuildConfig, ScoreConfig

from ..options import validate
from ..startup import overlapped


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", default=".bergson-demo", help="Where the demo writes its files.")
    parser.add_argument("--projection-dim", type=int, default=16, help="Projection size p (default: 16).")


def run(args) -> int:
    from bergson_core.eval.demo import prepare_demo, topic_precision

    from .. import render
    from . import launch

    workdir = os.path.abspath(args.workdir)
    print(f"demo workspace: {workdir}")
    log = lambda s, loss: print(f"  training tiny model: step {s:4d} loss {loss:.3f}")  # noqa: E731
    paths = overlapped(lambda: prepare_demo(workdir, log=log))  # train while Prefect starts
    build = validate(BuildConfig, {"index": paths["index"], "model": paths["model"], "dataset": paths["corpus"],
                                   "id_column": "id", "projection_dim": args.projection_dim, "shard_size": 100,
                                   "overwrite": True})
    render.build_summary(launch("build", build))
    result = launch("score", validate(ScoreConfig, {"index": paths["index"], "queries": paths["queries"], "top_k": 3}))
    render.topk(result)
    hits, total = topic_precision(result["rows"], paths["corpus"], paths["queries"])
    print(f"Each query is about one topic (8 topics, so chance is 1 in 8). {hits} of the {total} retrieved "
          "documents share their query's topic (the prefix of each doc id).")
    return 0
