"""`bergson tracin --indexes I1 I2 ... --queries Q --output DIR`: multi-checkpoint TracIn."""

from bergson_core.config.dynamics import TracInConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "tracin", 60
HELP = ("TracIn over training checkpoints: sum_k lr_k <g_q, g_d> from one index per checkpoint; "
        "writes DIR/topk.parquet (usable by `bergson validate`).")


def add_arguments(parser) -> None:
    add_model_arguments(parser, TracInConfig)


def run(args) -> int:
    from rich.console import Console

    summary = run_tracin(build_config(TracInConfig, args))
    Console().print(f"TracIn over {len(summary['indexes'])} checkpoint(s), learning rates "
                    f"{summary['learning_rates']}: {summary['output']}")
    return 0


def run_tracin(cfg: TracInConfig) -> dict:
    from bergson_core.methods.tracin.run import learning_rates, open_indexes

    def check():  # fail fast on bad inputs while Prefect starts
        _, metas = open_indexes(cfg)
        learning_rates(cfg, metas)

    overlapped(check)
    from ..tracin import tracin

    return tracin(cfg)
