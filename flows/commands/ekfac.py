"""`bergson ekfac INDEX --model M --dataset D --queries Q`: EK-FAC influence in one command."""

from bergson_core.config.curvature import EkfacConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "ekfac", 26
HELP = ("EK-FAC influence in one command: fit EK-FAC over the corpus, precondition the query gradients, score "
        "them against the corpus gradients (inner products, kronfluence's sign). --mode exact recomputes full, "
        "unprojected corpus gradients (the default for small corpora); --mode projected scores through a "
        "randomly projected index and is an APPROXIMATION of the exact scores. Writes OUTPUT/topk.parquet.")


def add_arguments(parser) -> None:
    add_model_arguments(parser, EkfacConfig, positional=("index",))


def run(args) -> int:
    from .. import render

    result = run_ekfac(build_config(EkfacConfig, args))
    render.topk(result)
    render.console.print(f"mode: {result['mode']}" + (" (an approximation of exact EK-FAC influence)"
                                                      if result["mode"] == "projected" else ""))
    return 0


def run_ekfac(cfg: EkfacConfig) -> dict:
    def preload():  # validation and model loading while Prefect starts
        from bergson_core.curvature.run import check_queries, ekfac_mode
        from bergson_core.index.build import prepare_build

        prepare_build(cfg.build_config(ekfac_mode(cfg)), write=False)
        check_queries(cfg)

    overlapped(preload)
    from ..ekfac import ekfac

    return ekfac(cfg)
