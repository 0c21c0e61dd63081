"""Recipe: Arnoldi influence (Schioppa et al. 2022) through an index.

the top eigenpairs of the curvature by Arnoldi iteration with curvature-vector products through the
index's model, the query gradients inverted in their span (one task) -> inner products with every
stored row -> topk.parquet.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config.estimators import ArnoldiConfig
from tasks.estimators import precondition_queries, score_preconditioned


@flow(name="arnoldi", log_prints=True)
def arnoldi(config: ArnoldiConfig) -> dict:
    part = precondition_queries(config)
    eig = part["eigenvalues"]
    print(f"Arnoldi: {len(eig)} eigenpairs, eigenvalues {max(eig):.4g} .. {min(eig):.4g}")
    return score_preconditioned(config, part, "arnoldi")
