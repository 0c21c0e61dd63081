"""Recipe: EK-FAC influence (George et al. 2018; Grosse et al. 2023) in one flow.

pick the mode -> build the index (exact: full float32 gradients; projected: the random projection)
-> fit KFAC factors by model passes, then EK-FAC's eigenvalue pass (exact: model passes; projected:
the stored rows) -> H^-1 applied to the query gradients -> inner products with the corpus gradients
-> topk.parquet + a table artifact. Exact mode recomputes the corpus gradients unprojected; projected
mode is an approximation (scores in a random projection). Every step reuses what is stored.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config.curvature import EkfacConfig

from .build import build_index
from .fit import fit
from .score import score


@flow(name="ekfac", log_prints=True)
def ekfac(config: EkfacConfig) -> dict:
    from bergson_core.curvature.run import ekfac_mode

    mode = ekfac_mode(config)
    built = build_index(config.build_config(mode))
    fitted = fit(config.fit_config(mode))
    result = score(config.score_config())
    return {**result, "mode": mode, "build": built, "fit": fitted}
