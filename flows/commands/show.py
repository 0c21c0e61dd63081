"""How each command prints its result in the terminal (the `render` column of the command table).
rich is imported on use, so building the CLI's parser stays cheap."""

from __future__ import annotations


def build(result: dict) -> None:
    from .. import render

    if "calibration_tokens_per_second" in result:  # build --dry-run: the plan
        return plan(result)
    if result.get("nothing_to_do"):
        render.console.print(f"index {result['index']} is complete ({result['shards']} shards, "
                             f"{result['documents']:,} documents) and its inputs are unchanged: nothing to do")
        return
    render.build_summary(result)


def plan(result: dict) -> None:
    from ..plan import render

    render(result)


def topk(result: dict) -> None:
    from .. import render

    render.topk(result)


def ekfac(result: dict) -> None:
    from .. import render

    render.topk(result)
    render.console.print(f"mode: {result['mode']}" + (" (an approximation of exact EK-FAC influence)"
                                                      if result["mode"] == "projected" else ""))


def fit(result: dict) -> None:
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


def validate(result: dict) -> None:
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


def recall(result: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print(result["markdown"])
    for k, v in result["paths"].items():
        console.print(f"{k}: {v}")


def tracin(summary: dict) -> None:
    from rich.console import Console

    Console().print(f"TracIn over {len(summary['indexes'])} checkpoint(s), learning rates "
                    f"{summary['learning_rates']}: {summary['output']}")


def magic(s: dict) -> None:
    from rich.console import Console

    Console().print(f"MAGIC over {s['steps']} steps ({s['checkpointing']} checkpointing, at most {s['peak_states']} "
                    f"states = {s['peak_state_bytes'] / 2**20:.1f} MiB, {s['forward_steps']} forward and "
                    f"{s['backward_steps']} backward steps, {s['compute_seconds']:.1f} s): {s['output']}")
    if s.get("token_output"):
        Console().print(f"per-token scores: {s['token_output']}")


def source(s: dict) -> None:
    from rich.console import Console

    Console().print(f"SOURCE ({s['variant']} variant) over {len(s['checkpoints'])} checkpoint(s) in "
                    f"{len(s['segments'])} segment(s), learning-rate totals "
                    f"{', '.join(f'{e:.3g}' for e in s['segment_learning_rates'])}: {s['output']}")


def query(result: dict) -> None:
    """Per prompt: the most helpful (top) and most harmful (bottom) documents shown; stdin mode's
    final summary is only a count (each answer was printed as it came)."""
    from rich.table import Table

    from .. import render

    if "answered" in result:
        render.console.print(f"answered {result['answered']} prompt(s)")
        return
    rows, texts = result["rows"], result["query_texts"]
    for q in range(len(texts)):
        for side, title in (("top", "most helpful"), ("bottom", "most harmful")):
            mine = [r for r in rows if r["query_index"] == q and r["side"] == side]
            if not mine:
                continue
            t = Table(title=f"query {q}: {texts[q]} — {title}", title_justify="left")
            for col in ("rank", "score", "doc", "text"):
                t.add_column(col, overflow="fold")
            for r in mine:
                t.add_row(str(r["rank"]), f"{r['score']:.4f}", f"{r['doc_id']} (#{r['doc_index']})", r["text"] or "")
            render.console.print(t)
    how = f"FAISS search of {result['faiss']}" if result["faiss"] else "exact search of all shards"
    render.console.print(f"{how}: {result['search_seconds'] * 1000:.0f} ms; "
                         f"all {result['table_rows']:,} rows written to {result['output']}")
    if result.get("per_token"):
        from rich.markup import escape

        for r in rows:  # the shown documents, their strongest tokens highlighted
            marked = result["per_token"]["strongest"].get(f"{r['query_index']}:{r['doc_index']}", [])
            line = "".join(f"[bold reverse]{escape(t)}[/]" if strong else escape(t) for t, strong in marked)
            render.console.print(f"query {r['query_index']}, {r['side']} #{r['rank']} ({r['doc_id']}): {line}")
        render.console.print(f"per-token scores written to {result['per_token']['output']}")
    for w in result.get("warnings") or []:
        render.console.print(f"[yellow]warning:[/] {w}")


def trak(s: dict) -> None:
    from rich.console import Console

    Console().print(f"TRAK over {len(s['models'])} model(s), damping {s['damping']:g} ({s['damping_mode']}): "
                    f"{s['output']}")


def lissa(s: dict) -> None:
    from rich.console import Console

    state = "converged" if s["converged"] else "NOT converged (raise --damping or --scale, or use --hessian ggn)"
    Console().print(f"LiSSA ({s['hessian']}, {s['parameters']} parameters, damping {s['damping']:.3g}, scale "
                    f"{s['scale']:.3g}): relative update {s['relative_update_first']:.2e} -> "
                    f"{s['relative_update_last']:.2e}, {state}: {s['output']}")


def arnoldi(s: dict) -> None:
    from rich.console import Console

    Console().print(f"Arnoldi ({s['hessian']}, {s['parameters']} parameters): {len(s['eigenvalues'])} eigenpairs, "
                    f"eigenvalues {max(s['eigenvalues']):.4g} .. {min(s['eigenvalues']):.4g}: {s['output']}")
