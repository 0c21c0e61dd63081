"""`bergson recall --queries Q --scores S1 S2`: MRR and recall@k of known supporting documents."""

from bergson_core.config.eval import RecallConfig

from ..options import add_model_arguments, build_config
from ..startup import start_prefect

NAME, ORDER = "recall", 45
HELP = "MRR and recall@k of each query's known supporting documents in score files' rankings."


def add_arguments(parser) -> None:
    add_model_arguments(parser, RecallConfig)


def run(args) -> int:
    from rich.console import Console

    result = run_recall(build_config(RecallConfig, args))
    console = Console()
    console.print(result["markdown"])
    for k, v in result["paths"].items():
        console.print(f"{k}: {v}")
    return 0


def run_recall(cfg: RecallConfig) -> dict:
    from bergson_core.errors import ConfigError
    from bergson_core.eval.evaluate import read_support
    from bergson_core.eval.scores import resolve_score_file

    if not cfg.scores:
        raise ConfigError("give at least one score file: --scores FILE [FILE ...]")
    for s in cfg.scores:  # fail fast, before Prefect starts
        resolve_score_file(s, cfg.storage_options)
    read_support(cfg.queries, cfg.support_column, cfg.storage_options)
    start_prefect()
    from ..recall import recall

    return recall(cfg)
