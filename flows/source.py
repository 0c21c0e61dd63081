"""Recipe: SOURCE (approximate unrolling over training checkpoints, Bae et al. 2024).

plan (checkpoints, segments, eta per segment) -> per checkpoint: build its index, fit its KFAC
statistics (the ordinary subflows, so a rerun skips finished shards) -> per segment: EK-FAC of the
averaged factors, eigenvalues corrected on its checkpoints' rows (fan-out) -> query gradients at
the final checkpoint -> the query carried back through the segments, scored against every
checkpoint's rows -> topk.parquet, source.json + a table artifact.
"""

from __future__ import annotations

from prefect import flow, unmapped

from bergson_core.config.source import SourceConfig
from tasks import artifacts
from tasks.source import source_query_gradients, source_score, source_segment

from .build import build_index
from .fit import fit


@flow(name="source", log_prints=True)
def source(config: SourceConfig) -> dict:
    from bergson_core.methods.source.run import build_config, kfac_config, plan_source, spec_of

    plan = plan_source(config)
    for k in range(len(plan["checkpoints"])):
        build_index(build_config(config, plan, k))
        fit(kfac_config(config, plan, k))
    segments = source_segment.map(unmapped(config), unmapped(plan), list(range(len(plan["groups"]))))
    query_file = source_query_gradients(config, plan)
    summary = source_score(config, plan, query_file, wait_for=segments)
    rows = [{"segment": s, "checkpoints": ", ".join(plan["checkpoints"][k]["folder"] for k in members),
             "learning_rate_total": eta, "fit": r.result()["name"]}
            for s, (members, eta, r) in enumerate(zip(plan["groups"], plan["etas"], segments))]
    artifacts.table(artifacts.artifact_key("source", spec_of(config)), rows,
                    f"SOURCE ({plan['variant']} variant, {len(rows)} segments) -> {summary['output']}")
    return summary
