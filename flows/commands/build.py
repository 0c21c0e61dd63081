"""`bergson build INDEX --model M --dataset D`: compute per-document gradients into an index."""

from bergson_core.config import BuildConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "build", 10
HELP = "Compute per-document gradients of a corpus into an index (local path or s3:// URL)."


def add_arguments(parser) -> None:
    add_model_arguments(parser, BuildConfig, positional=("index",))


def run(args) -> int:
    from .. import render

    render.build_summary(run_build(build_config(BuildConfig, args)))
    return 0


def run_build(cfg: BuildConfig) -> dict:
    def preload():  # imports torch inside the thread, so the API server starts first
        from bergson_core.build import prepare_build

        return prepare_build(cfg, write=False)

    overlapped(preload)  # validate + load while Prefect starts
    from ..build import build_index

    return build_index(cfg)
