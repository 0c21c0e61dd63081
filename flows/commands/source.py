"""`bergson source --checkpoints C1 C2 ... --dataset D --queries Q --output DIR`: SOURCE."""

from bergson_core.config.source import SourceConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "source", 63
HELP = ("SOURCE: approximate unrolling over training checkpoints grouped in segments (per-segment EK-FAC, "
        "the query carried back through the segments); writes DIR/topk.parquet (usable by `bergson validate`).")


def add_arguments(parser) -> None:
    add_model_arguments(parser, SourceConfig)


def run(args) -> int:
    from rich.console import Console

    s = run_source(build_config(SourceConfig, args))
    Console().print(f"SOURCE ({s['variant']} variant) over {len(s['checkpoints'])} checkpoint(s) in "
                    f"{len(s['segments'])} segment(s), learning-rate totals "
                    f"{', '.join(f'{e:.3g}' for e in s['segment_learning_rates'])}: {s['output']}")
    return 0


def run_source(cfg: SourceConfig) -> dict:
    from bergson_core.methods.source.run import plan_source

    overlapped(lambda: plan_source(cfg))  # fail fast on bad inputs while Prefect starts
    from ..source import source

    return source(cfg)
