"""`bergson fit INDEX --strategy S`: fit a preconditioner over an index (map / reduce over shards)."""

from bergson_core.config.curvature import STRATEGY_NAMES, FitConfig

from ..options import add_model_arguments, build_config
from ..startup import overlapped

NAME, ORDER = "fit", 22
HELP = (f"Fit a preconditioner over an index ({', '.join(STRATEGY_NAMES)}): per-shard "
        "statistics, reduced, fitted in float64, saved as INDEX/precond/NAME for `bergson score --preconditioner`.")


def add_arguments(parser) -> None:
    add_model_arguments(parser, FitConfig, positional=("index",))


def run(args) -> int:
    summary(run_fit(build_config(FitConfig, args)))
    return 0


def run_fit(cfg: FitConfig) -> dict:
    def preload():  # validate, load the model and compute query gradients while Prefect starts
        from bergson_core.curvature.run import plan_fit
        from bergson_core.scoring.run import ensure_query_gradients

        cfg.source()
        if cfg.queries:
            ensure_query_gradients(cfg.query_score_config())
        return plan_fit(cfg)

    overlapped(preload)
    from ..fit import fit

    return fit(cfg)


def summary(result: dict) -> None:
    from rich.table import Table

    from ..render import console

    t = Table(title=f"preconditioner {result['preconditioner']} ({result['strategy']}) of {result['index']}")
    for col in ("pass", "source", "shards", "computed now", "seconds", "folder"):
        t.add_column(col)
    for p in result["passes"]:
        t.add_row(p["kind"], p["source"], str(p["shards"]), str(p["computed"]), f"{p['seconds']:.1f}",
                  f"stats/{p['dir']}")
    console.print(t)
    mix = f", mix lambda {result['mix_lambda']:.4g}" if result.get("mix_lambda") is not None else ""
    console.print(f"{'fitted' if result['refitted'] else 'reused'} precond/{result['preconditioner']} "
                  f"(fingerprint {result['fingerprint']}{mix}) in {result['seconds']:.1f} s")
