"""Recipe: LiSSA influence (Agarwal et al. 2017; Koh & Liang 2017) through an index.

query gradients and (H + lambda I)^-1 on them by the LiSSA recursion with curvature-vector products
through the index's model (one task) -> inner products with every stored row -> topk.parquet.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config.estimators import LissaConfig
from tasks.estimators import precondition_queries, score_preconditioned


@flow(name="lissa", log_prints=True)
def lissa(config: LissaConfig) -> dict:
    part = precondition_queries(config)
    print(f"LiSSA: largest eigenvalue ~{part['largest_eigenvalue']:.4g}, scale {part['scale']:.4g}, relative update "
          f"{part['relative_update_first']:.2e} -> {part['relative_update_last']:.2e} after {config.depth} steps")
    return score_preconditioned(config, part, "lissa")
