"""Terminal output: readable tables of results (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def build_summary(result: dict) -> None:
    t = Table(title=f"index {result['index']}", show_header=False)
    for key in ("documents", "shards", "shards_computed", "shards_skipped", "tokens", "bytes",
                "empty_documents", "tokens_per_second", "seconds"):
        v = result.get(key)
        t.add_row(key.replace("_", " "), f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
    console.print(t)
    if result.get("block_runs"):  # --fan-out workers
        console.print(f"{result['block_runs']} block runs ({result['blocks_adopted']} adopted from an earlier run, "
                      f"{result['blocks_retried']} retried)")
    for shard, why in (result.get("shards_recomputed") or {}).items():
        console.print(f"[yellow]warning:[/] shard {shard} failed verification ({why}) and was recomputed")
    if result.get("empty_documents"):
        console.print(f"[yellow]warning:[/] {result['empty_documents']} documents had fewer than 2 tokens "
                      "(or no loss tokens) and were stored as zero rows")


def topk(result: dict, per_query: int | None = None) -> None:
    """The first `show` ranks of each query (the rows a flow returns); the file holds all top-k."""
    rows = result["rows"]
    per_query = result.get("show") if per_query is None else per_query
    texts = result.get("query_texts", [])
    for q in sorted({r["query_index"] for r in rows}):
        title = "all queries (aggregate)" if q < 0 else f"query {q}: {texts[q] if q < len(texts) else ''}"
        t = Table(title=title, title_justify="left")
        for col in ("rank", "score", "doc", "text"):
            t.add_column(col, overflow="fold")
        for r in [r for r in rows if r["query_index"] == q][:per_query]:
            t.add_row(str(r["rank"]), f"{r['score']:.4f}", f"{r['doc_id']} (#{r['doc_index']})", r["text"] or "")
        console.print(t)
    if result.get("table_rows") is not None:
        console.print(f"showing {min(result.get('show') or 0, result.get('top_k') or 0)} of top-{result.get('top_k')} "
                      f"per query; all {result['table_rows']:,} rows written to {result['output']}")
    else:
        console.print(f"top-k written to {result['output']}")
    picked = result.get("corpus_gradients")
    if isinstance(picked, dict):
        console.print(f"corpus gradients: {picked['picked']} ({picked['reason']})")
    for w in result.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {w}")


def inspect(report: dict) -> None:
    t = Table(title=f"index {report['index']}", show_header=False)
    status = "[green]healthy[/]" if report["healthy"] else "[red]incomplete or corrupt[/]"
    for k, v in (
        ("status", status),
        ("model", report["model"]),
        ("dataset", f"{report['dataset']['uri']} ({report['dataset']['rows']:,} rows)"),
        ("spec hash", report["spec_hash"]),
        ("projection", f"p={report['projection_dim']}, {report['grad_dtype']}, {report['row_width']:,} numbers/doc"),
        ("shards", f"{report['shards_complete']}/{report['shards_expected']} complete"),
        ("missing", ", ".join(map(str, report["shards_missing"])) or "none"),
        ("corrupt", ", ".join(map(str, report["shards_corrupt"])) or "none"),
        ("orphan files", ", ".join(report["orphan_files"]) or "none"),
        ("stored", f"{report['documents_stored']:,} documents, {report['bytes'] / 2**20:,.1f} MiB"),
    ):
        t.add_row(k, str(v))
    console.print(t)
    m = Table(title="tracked modules")
    for col in ("module", "out x in", "bias", "columns"):
        m.add_column(col)
    for mod in report["modules"]:
        m.add_row(mod["name"], f"{mod['out_features']} x {mod['in_features']}", "yes" if mod["has_bias"] else "no",
                  f"{mod['offset']}..{mod['offset'] + mod['width'] - 1}")
    console.print(m)
