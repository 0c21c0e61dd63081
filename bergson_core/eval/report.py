"""Reports people look at: Parquet tables, PNG plots (matplotlib, Agg backend) and markdown."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fs as fsu


def write_parquet(rows: list[dict], url: str, storage_options: dict | None = None) -> str:
    fs, path = fsu.url_to_fs(url, storage_options)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    fsu.write_bytes(fs, path, sink.getvalue().to_pybytes())
    return url


def _save(fig, url: str, storage_options: dict | None) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fs, path = fsu.url_to_fs(url, storage_options)
    fsu.write_bytes(fs, path, buf.getvalue())
    return url


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_actual(panels: list[dict], url: str, queries: int = 3,
                             storage_options: dict | None = None) -> str:
    """One row per method, one column per query: x = predicted loss change (summed scores of the
    left-out documents; arbitrary units), y = measured loss change (retrained - full model).

    panels: [{"name", "predicted" [S, Q], "actual" [S, Q], "per_query" [Q]}]."""
    plt = _pyplot()
    nq = min(queries, panels[0]["actual"].shape[1]) if panels else 0
    fig, axes = plt.subplots(len(panels), max(nq, 1), figsize=(3.2 * max(nq, 1), 2.8 * len(panels)),
                             squeeze=False)
    for r, panel in enumerate(panels):
        for c in range(nq):
            ax = axes[r][c]
            ax.scatter(panel["predicted"][:, c], panel["actual"][:, c], s=12, alpha=0.8)
            rho = panel["per_query"][c]
            ax.set_title(f"{panel['name']}, query {c}\nSpearman {rho:.2f}" if np.isfinite(rho)
                         else f"{panel['name']}, query {c}", fontsize=9)
            ax.set_xlabel("predicted: sum of left-out scores", fontsize=8)
            ax.set_ylabel("actual loss change", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, url, storage_options)


def plot_bars(panels: list[dict], url: str, storage_options: dict | None = None) -> str:
    """Bar charts with error bars, one panel per metric.

    panels: [{"title", "names" [M], "values" [M], "errors" [M]}]; NaN values are drawn as gaps."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        names = panel["names"]
        values = [v if v is not None and math.isfinite(v) else 0.0 for v in panel["values"]]
        errors = [e if e is not None and math.isfinite(e) else 0.0 for e in panel["errors"]]
        ax.bar(range(len(names)), values, yerr=errors, capsize=4, color="#4c72b0")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_title(panel["title"], fontsize=10)
    fig.tight_layout()
    return _save(fig, url, storage_options)


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: [(key, header)]."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"
