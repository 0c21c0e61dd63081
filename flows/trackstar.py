"""Recipe: TrackStar (Chang et al. 2024, "Scalable influence and fact tracing for large language
model pretraining") in one flow.

build the index (optimizer-normalised when --optimizer-state is given, projected) -> query
gradients -> unit-normalised gradient covariance of the corpus (per shard) and of the queries ->
mixed, fitted in float64 -> cosine of H^-1/2-preconditioned query and corpus gradients ->
topk.parquet + a table artifact. Every step reuses what an earlier run already stored.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config.curvature import TrackstarConfig

from .build import build_index
from .fit import fit
from .score import score


@flow(name="trackstar", log_prints=True)
def trackstar(config: TrackstarConfig) -> dict:
    built = build_index(config.build_config())
    fitted = fit(config.fit_config())
    result = score(config.score_config())
    return {**result, "build": built, "fit": fitted}
