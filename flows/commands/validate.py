"""`bergson validate BANK --model INIT --dataset D --queries Q --scores S1 S2`: LDS of score files.

Retrains one model per subset from the init (each a cached, retriable Prefect task tagged gpu),
stores the query losses in BANK and reports the Spearman correlation between summed scores of the
kept documents and the measured query loss. The bank is reused: a new score file costs no
retraining. Without --scores it only fills the bank (and trains the full model to attribute).
"""

from bergson_core.config.eval import ValidateConfig

from ..options import add_model_arguments, build_config
from ..startup import Background, start_prefect

NAME, ORDER = "validate", 40
HELP = "LDS of score files: retrain on subsets (a stored, reusable bank of query losses) and correlate."


def add_arguments(parser) -> None:
    add_model_arguments(parser, ValidateConfig, positional=("bank",))


def run(args) -> int:
    show(run_validate(build_config(ValidateConfig, args)))
    return 0


def run_validate(cfg: ValidateConfig) -> dict:
    from bergson_core.eval.retrain import prepare_bank

    pre = Background(lambda: prepare_bank(cfg, write=False))  # validate + load while Prefect starts
    start_prefect()
    pre.result()
    from ..validate import validate

    return validate(cfg)


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from bergson_core.eval.report import fmt

    console = Console()
    c = result["cost"]
    console.print(f"bank {result['bank']}: {result['documents']} documents, {result['queries']} queries, "
                  f"{result['subsets']} subsets; retrained now: {result['retrained_now']}")
    console.print(f"cost of the bank: {c['retrainings']} retrainings x {c['seconds_per_retraining']:.2f} s = "
                  f"{c['retraining_seconds']:.1f} s (+ the full model)")
    console.print(f"full model (build the index from it): {result['full_checkpoint']}/model")
    if result["methods"]:
        t = Table(title="LDS (Spearman of summed kept scores vs -query loss)")
        for col in ("method", "LDS", "s.e.", "queries"):
            t.add_column(col)
        for m in result["methods"]:
            t.add_row(m["method"], fmt(m["lds"]), fmt(m["lds_stderr"]), str(m["queries"]))
        console.print(t)
    for k, v in result["paths"].items():
        console.print(f"{k}: {v}")
