"""Curvature for influence functions: statistics as mergeable sums, float64 fits, preconditioners.

Map-reduce shape (one Prefect task per shard in flows; plain functions here):

    partial = kfac_partial_stats(loaded, modules, docs, space)        # per shard, needs the model
    save_stats(index, partial, shard=i)                                # <index>/stats/kfac/shard-i
    total = reduce_stats([load_stats(index, "kfac", i) for i in ...])
    kfac = fit_preconditioner("kfac", {"kfac": total})                 # float64 eigh
    lam = reduce_stats([lambda_partial_stats(loaded, modules, docs_i, kfac) ...])
    ekfac = fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=kfac)
    save_preconditioner(index, "ekfac", ekfac)                         # <index>/precond/ekfac/
    pq = apply_preconditioner(ekfac, query_rows, ApplyOptions(damping=1e-3, damping_mode="absolute"))

Strategies: one module each in strategies/, registered in strategy.STRATEGIES (docs/architecture.md).
"""

from .io import (
    has_preconditioner,
    has_stats,
    list_stats_shards,
    load_preconditioner,
    load_stats,
    save_preconditioner,
    save_stats,
)
from .options import ApplyOptions, FitOptions, StatsOptions
from .passes import (
    autocorr_partial_stats,
    diagonal_partial_stats,
    kfac_partial_stats,
    lambda_partial_stats,
    rows_diagonal_partial_stats,
    rows_lambda_partial_stats,
)
from .registry import STRATEGIES, Fit, apply_preconditioner, fit_preconditioner, get_strategy
from .space import Block, Space, index_layout, layout, project_rows
from .stats import StatisticError, Stats, reduce_stats
from .strategies.shampoo import rows_shampoo_partial_stats, shampoo_partial_stats

apply = apply_preconditioner

__all__ = [
    "ApplyOptions", "Block", "Fit", "FitOptions", "STRATEGIES", "Space", "StatisticError", "Stats",
    "StatsOptions", "apply", "apply_preconditioner", "autocorr_partial_stats", "diagonal_partial_stats",
    "fit_preconditioner", "get_strategy", "has_preconditioner", "has_stats", "index_layout", "kfac_partial_stats",
    "lambda_partial_stats", "layout", "list_stats_shards", "load_preconditioner", "load_stats",
    "project_rows", "reduce_stats", "rows_diagonal_partial_stats", "rows_lambda_partial_stats",
    "rows_shampoo_partial_stats", "save_preconditioner", "save_stats", "shampoo_partial_stats",
]
