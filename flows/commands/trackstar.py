"""`bergson trackstar INDEX --model M --dataset D --queries Q`: TrackStar attribution in one command."""

from bergson_core.config.curvature import TrackstarConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "trackstar", 24
HELP = ("TrackStar in one command: build an index of projected gradients (Adam/Adafactor-normalised with "
        "--optimizer-state), fit the unit-normalised gradient covariance of corpus and queries, score cosine "
        "similarity of H^-1/2-preconditioned gradients; writes OUTPUT/topk.parquet.")


def add_arguments(parser) -> None:
    add_model_arguments(parser, TrackstarConfig, positional=("index",))


def run(args) -> int:
    from .. import render

    render.topk(run_trackstar(build_config(TrackstarConfig, args)))
    return 0


def run_trackstar(cfg: TrackstarConfig) -> dict:
    def preload():  # validation (model, corpus, optimizer state, query columns) while Prefect starts
        from bergson_core.curvature.run import check_queries
        from bergson_core.index.build import prepare_build

        prepare_build(cfg.build_config(), write=False)
        check_queries(cfg)

    overlapped(preload)
    from ..trackstar import trackstar

    return trackstar(cfg)
