"""`bergson score INDEX --queries Q`: top-k documents per query, as Parquet and a table."""

from bergson_core.config import ScoreConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "score", 20
HELP = "Score queries against an index; write DIR/topk.parquet (query_index, rank, doc_index, score, doc_id, text)."


def add_arguments(parser) -> None:
    add_model_arguments(parser, ScoreConfig, positional=("index",))


def run(args) -> int:
    from .. import render

    render.topk(run_score(build_config(ScoreConfig, args)))
    return 0


def run_score(cfg: ScoreConfig) -> dict:
    def preload():  # imports torch inside the thread, so the API server starts first
        from bergson_core.scoring.run import ensure_query_gradients, preconditioner_transforms

        preconditioner_transforms(cfg)  # a preconditioner of another projection is refused at once
        return ensure_query_gradients(cfg)

    overlapped(preload)  # query gradients while Prefect starts
    from ..score import score

    return score(cfg)
