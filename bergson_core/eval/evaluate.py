"""Evaluating score files: LDS against a bank, MRR / recall@k against known supporting documents,
and the report files (Parquet, PNG, markdown) that show the results."""

from __future__ import annotations

import json

import numpy as np

from .. import fs as fsu
from ..data.corpus import check_columns
from ..errors import InputError
from ..index.build import open_corpus
from .bank import Bank
from .bank import cost as bank_cost
from .lds import lds, mean_stderr, predicted
from .metrics import recall_at_k, reciprocal_rank
from .report import markdown_table, plot_bars, plot_predicted_vs_actual, write_parquet
from .scores import dense_scores, read_score_table

LDS_SUMMARY = "lds_summary.parquet"
LDS_PER_QUERY = "lds_per_query.parquet"
BANK_LOSSES = "bank_losses.parquet"
LDS_PLOT = "lds.png"
SCATTER_PLOT = "predicted_vs_actual.png"
RECALL_SUMMARY = "recall_summary.parquet"
RECALL_PER_QUERY = "recall_per_query.parquet"


# -- LDS ------------------------------------------------------------------------------------------
def lds_of_file(bank_url: str, url: str, name: str, storage_options: dict | None = None) -> dict:
    """LDS of one score file against a finished bank (no retraining)."""
    bank = Bank(bank_url, storage_options)
    _, losses, _ = bank.losses()
    masks = bank.masks()
    scores = dense_scores(url, losses.shape[1], masks.shape[1], storage_options)
    res = lds(scores, masks, losses)
    return {"method": name, "score_file": url, "subsets": int(masks.shape[0]), **res.to_json()}


def lds_report(bank_url: str, results: list[dict], output: str, storage_options: dict | None = None) -> dict:
    """Write the LDS tables and plots for `results` (from lds_of_file) under `output`."""
    bank = Bank(bank_url, storage_options)
    full, losses, manifests = bank.losses()
    masks = bank.masks()
    summary = [{k: r[k] for k in ("method", "lds", "lds_stderr", "queries", "subsets", "score_file")}
               for r in results]
    per_query = [{"method": r["method"], "query_index": q, "lds": v}
                 for r in results for q, v in enumerate(r["per_query"])]
    bank_rows = [{"subset": s, "query_index": q, "loss": float(losses[s, q]), "full_loss": float(full[q]),
                  "kept": int(masks[s].sum())} for s in range(losses.shape[0]) for q in range(losses.shape[1])]
    paths = {
        "summary": write_parquet(summary, fsu.join(output, LDS_SUMMARY), storage_options),
        "per_query": write_parquet(per_query, fsu.join(output, LDS_PER_QUERY), storage_options),
        "bank_losses": write_parquet(bank_rows, fsu.join(output, BANK_LOSSES), storage_options),
    }
    if results:
        panels = []
        for r in results:
            scores = dense_scores(r["score_file"], losses.shape[1], masks.shape[1], storage_options)
            panels.append({"name": r["method"], "predicted": predicted(scores, ~masks),
                           "actual": losses - full[None, :], "per_query": np.array(r["per_query"], dtype=float)})
        paths["scatter_plot"] = plot_predicted_vs_actual(panels, fsu.join(output, SCATTER_PLOT),
                                                         storage_options=storage_options)
        paths["lds_plot"] = plot_bars([{"title": f"LDS ({masks.shape[0]} retrained subsets, mean ± s.e.)",
                                        "names": [r["method"] for r in results],
                                        "values": [r["lds"] for r in results],
                                        "errors": [r["lds_stderr"] for r in results]}],
                                      fsu.join(output, LDS_PLOT), storage_options)
    cost = bank_cost(manifests)
    md = ("# LDS\n\n" + markdown_table(summary, [("method", "method"), ("lds", "LDS"), ("lds_stderr", "s.e."),
                                                 ("queries", "queries"), ("subsets", "subsets")])
          + f"\nBank {bank_url}: {cost['retrainings']} retrainings x {cost['seconds_per_retraining']:.2f} s "
          f"= {cost['retraining_seconds']:.1f} s.\n")
    return {"paths": paths, "markdown": md, "cost": cost, "summary": summary}


# -- recall -----------------------------------------------------------------------------------------
def _support_list(value) -> list[str]:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            value = json.loads(value)
        else:
            value = [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def read_support(queries_uri: str, column: str, storage_options: dict | None = None) -> list[list[str]]:
    """Each query's supporting document ids: a list column, a JSON list or a comma-separated string."""
    queries = open_corpus(queries_uri, "train", storage_options)
    check_columns(queries, column)
    support = [_support_list(v) for v in queries.dataset[column]]
    empty = [i for i, s in enumerate(support) if not s]
    if empty:
        raise InputError(f"queries {empty[:5]} of {queries_uri} have no supporting documents in {column!r}")
    return support


def rankings(url: str, num_queries: int, storage_options: dict | None = None) -> list[list[str]]:
    """Each query's ranked document ids (by rank, else by descending score) from a score file."""
    table = read_score_table(url, storage_options).to_pydict()
    ids = table.get("doc_id") or [str(d) for d in table["doc_index"]]
    key = table.get("rank") or [-s for s in table["score"]]
    out: list[list[tuple]] = [[] for _ in range(num_queries)]
    for q, k, d in zip(table["query_index"], key, ids):
        if 0 <= q < num_queries:
            out[q].append((k, d))
    return [[d for _, d in sorted(rows, key=lambda t: t[0])] for rows in out]


def recall_scores(ranked: list[list[str]], support: list[list[str]], ks: list[int]) -> tuple[dict, list[dict]]:
    """Mean ± s.e. of MRR and recall@k over queries, and the per-query rows."""
    rows = []
    for q, (ranking, rel) in enumerate(zip(ranked, support)):
        row = {"query_index": q, "reciprocal_rank": reciprocal_rank(ranking, rel)}
        row.update({f"recall@{k}": recall_at_k(ranking, rel, k) for k in ks})
        rows.append(row)
    summary = {}
    for key in ["reciprocal_rank"] + [f"recall@{k}" for k in ks]:
        mean, se, _ = mean_stderr(np.array([r[key] for r in rows]))
        name = "mrr" if key == "reciprocal_rank" else key
        summary[name], summary[f"{name}_stderr"] = mean, se
    return summary, rows


def recall_of_file(url: str, name: str, queries_uri: str, support_column: str, ks: list[int],
                   storage_options: dict | None = None) -> dict:
    support = read_support(queries_uri, support_column, storage_options)
    summary, rows = recall_scores(rankings(url, len(support), storage_options), support, ks)
    return {"method": name, "score_file": url, "queries": len(support), **summary, "per_query": rows}


def recall_report(results: list[dict], ks: list[int], output: str, storage_options: dict | None = None) -> dict:
    keys = ["mrr"] + [f"recall@{k}" for k in ks]
    summary = [{"method": r["method"], "queries": r["queries"], "score_file": r["score_file"],
                **{k: r[k] for k in keys}, **{f"{k}_stderr": r[f"{k}_stderr"] for k in keys}} for r in results]
    per_query = [{"method": r["method"], **row} for r in results for row in r["per_query"]]
    paths = {
        "summary": write_parquet(summary, fsu.join(output, RECALL_SUMMARY), storage_options),
        "per_query": write_parquet(per_query, fsu.join(output, RECALL_PER_QUERY), storage_options),
    }
    cols = [("method", "method")]
    for k in keys:
        cols += [(k, k.upper() if k == "mrr" else k), (f"{k}_stderr", "s.e.")]
    md = "# Recall of supporting documents\n\n" + markdown_table(summary, cols)
    return {"paths": paths, "markdown": md, "summary": summary}
