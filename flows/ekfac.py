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
from tasks import curvature
from tasks.score import query_gradients

from .build import build_index
from .fit import fit
from .score import score, topk_artifacts


@flow(name="ekfac", log_prints=True)
def ekfac(config: EkfacConfig) -> dict:
    """Returns a small summary: the first `show` ranks per query; topk.parquet holds the rest."""
    from bergson_core.curvature.run import ekfac_mode

    mode = ekfac_mode(config)
    bcfg = config.build_config(mode)
    if mode == "projected":
        built = build_index(bcfg)
        fitted = fit(config.fit_config(mode))
        result = score(config.score_config())
        return {**result, "mode": mode, "build": built, "fit": fitted}
    source = curvature.plan_exact(config, bcfg)
    print(f"exact mode, corpus gradients {source['picked']}: {source['reason']}")
    if source["picked"] == "stored":
        built = build_index(bcfg)
        fitted = fit(config.fit_config(mode))
        result = score(config.score_config())
    else:
        built = curvature.write_index_spec(bcfg)
        fitted = fit(config.fit_config(mode))
        scfg = config.score_config()
        qman = query_gradients(scfg, need_shards=False)
        result = curvature.score_recomputed(scfg)
        topk_artifacts(scfg, qman, result)
    return {**result, "mode": mode, "corpus_gradients": source, "build": built, "fit": fitted}
