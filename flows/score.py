"""Recipe: score queries against an index.

query gradients with the index's spec -> streaming top-k over the shards -> Parquet + table artifact.
"""

from __future__ import annotations

from prefect import flow

from bergson_core.config import ScoreConfig
from tasks import artifacts
from tasks.score import query_gradients, score_shards


@flow(name="score-index", log_prints=True)
def score(config: ScoreConfig) -> dict:
    """Returns a small summary: the first `show` ranks per query; topk.parquet holds the rest."""
    qman = query_gradients(config)
    result = score_shards(config)
    topk_artifacts(config, qman, result)
    return result


def topk_artifacts(config: ScoreConfig, qman: dict, result: dict) -> None:
    """A table of the shown ranks per query and a link to the full Parquet file."""
    key = artifacts.artifact_key("topk", qman["key"]["index_spec_hash"], _stem(config.queries))
    shown = [{k: r[k] for k in ("query_index", "rank", "doc_index", "score", "doc_id", "text")}
             for r in result["rows"]]
    artifacts.table(key, shown, f"Top-{min(config.show, config.top_k)} of {config.top_k} documents per query "
                    f"({config.metric}); all of them in {result['output']}")
    artifacts.link(key + "-parquet", result["output"], "The full top-k table as Parquet")


def _stem(path: str) -> str:
    import os

    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]
