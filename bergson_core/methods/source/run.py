"""`bergson source` as plain steps over the store (the flow in flows/source.py runs the same steps as
tasks and subflows; `run_source` runs them in one process):

    plan_source(cfg)                       validate; checkpoints, segments, variant, eta per segment
    per checkpoint k: build its index      OUTPUT/indexes/checkpoint-k (the ordinary build)
                      its KFAC statistics  OUTPUT/indexes/checkpoint-k/stats/kfac-<hash> (the ordinary fit)
    segment_fit(cfg, plan, l)              OUTPUT/segments/precond/segment-l (EK-FAC + P^1/2), cached by inputs
    final_query_gradients(cfg, plan)       OUTPUT/queries/final.arrow, cached by index spec and queries
    score_source(cfg, plan, query_file)    OUTPUT/topk.parquet + source.json

Each step reuses what the store already holds for the same inputs, so a killed run resumes.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ... import curvature as C
from ... import fs as fsu
from ...config import CODE_VERSION, ScoreConfig, spec_hash
from ...config.curvature import FitConfig
from ...config.source import SourceConfig
from ...curvature.stats import key as stat_key
from ...errors import ConfigError
from ...index.store import Index, grad_matrix
from .unroll import (
    SEGMENTS_DIR,
    SUMMARY_FILE,
    Segment,
    adam_sqrt_scale,
    fit_segment,
    query_directions,
    read_checkpoints,
    segment_groups,
    segment_learning_rates,
    variant,
)

SCALE_MODULE = "adam-preconditioner"  # where a segment fit keeps P^1/2 (not a module: apply ignores it)
QUERY_FILE = "queries/final"


def plan_source(cfg: SourceConfig) -> dict:
    """Everything decided before any work; raises UserError for a bad setup."""
    from ...curvature.run import check_queries

    if cfg.optimizer_state:
        raise ConfigError("SOURCE reads each checkpoint's own optimizer state: drop --optimizer-state")
    checkpoints = read_checkpoints(cfg.checkpoints)
    groups = segment_groups(len(checkpoints), cfg.segments)
    kind = variant(cfg, checkpoints)
    etas = segment_learning_rates(cfg, checkpoints, groups, kind)
    if any(e <= 0 for e in etas):
        raise ConfigError(f"segment learning rates must be positive, got {etas}: check the checkpoints' order")
    check_queries(cfg)
    return {"checkpoints": [{"folder": c.folder, "model": c.model, "step": c.step} for c in checkpoints],
            "indexes": [cfg.index_url(k) for k in range(len(checkpoints))], "groups": groups,
            "variant": kind, "etas": etas}


def build_config(cfg: SourceConfig, plan: dict, k: int):
    return cfg.build_config(k, plan["checkpoints"][k]["model"])


def kfac_config(cfg: SourceConfig, plan: dict, k: int) -> FitConfig:
    """The ordinary KFAC fit of checkpoint k's index (its statistics are what a segment averages)."""
    return FitConfig(index=plan["indexes"][k], strategy="kfac", name="source-kfac", stats_source="model",
                     fisher=cfg.fisher, model=plan["checkpoints"][k]["model"], dtype=cfg.dtype, device=cfg.device,
                     batch_tokens=cfg.batch_tokens, storage_options=cfg.storage_options, progress=cfg.progress)


def _kfac_total(cfg: SourceConfig, plan: dict, k: int) -> C.Stats:
    from ...curvature.run import plan_fit

    fcfg = kfac_config(cfg, plan, k)
    p = plan_fit(fcfg, load=False)["passes"][0]
    return C.load_stats(Index(fcfg.index, cfg.storage_options), p["dir"])


def _segments_root(cfg: SourceConfig) -> str:
    return fsu.join(cfg.output.rstrip("/"), SEGMENTS_DIR)


def _state_fingerprint(plan: dict, k: int) -> str:
    import os

    from ...gradients.normalizers import state_fingerprint
    from ...train.trainer import OPTIMIZER_FILE

    return state_fingerprint(os.path.join(plan["checkpoints"][k]["folder"], OPTIMIZER_FILE))


def segment_fit(cfg: SourceConfig, plan: dict, seg: int) -> dict:
    """Fit (or reuse) segment `seg`'s EK-FAC from its checkpoints' KFAC totals and index rows."""
    members = plan["groups"][seg]
    totals = [_kfac_total(cfg, plan, k) for k in members]
    indexes = [Index(plan["indexes"][k], cfg.storage_options) for k in members]
    inputs = {"kfac": [t.fingerprint() for t in totals], "variant": plan["variant"],
              "rows": [[m["sha256"] for m in ix.manifests()] for ix in indexes],
              "optimizer_states": [_state_fingerprint(plan, k) for k in members] if plan["variant"] == "adam" else [],
              "code_version": CODE_VERSION}
    name = f"segment-{seg}"
    root = _segments_root(cfg)
    if C.has_preconditioner(root, name, cfg.storage_options):
        old = C.load_preconditioner(root, name, storage_options=cfg.storage_options)
        if old.meta.get("inputs") == inputs:
            return {"segment": seg, "name": name, "skipped": True, "fingerprint": old.fingerprint()}
    t0 = time.perf_counter()
    sqrt_scale = None
    if plan["variant"] == "adam":
        _, modules, _ = C.index_layout(indexes[0].meta())
        checkpoints = read_checkpoints([plan["checkpoints"][k]["folder"] for k in members])
        sqrt_scale = torch.stack([adam_sqrt_scale(c, modules) for c in checkpoints]).square().mean(0).sqrt()

    def rows():
        for ix in indexes:
            for m in ix.manifests():
                yield grad_matrix(ix.open_shard(m["shard"]))

    fit = fit_segment(totals, rows(), sqrt_scale)
    if sqrt_scale is not None:
        fit.tensors[stat_key(SCALE_MODULE, "P_sqrt")] = sqrt_scale
    fit.meta.update(inputs=inputs, checkpoints=members, eta=plan["etas"][seg])
    manifest = C.save_preconditioner(root, name, fit, cfg.storage_options)
    return {"segment": seg, "name": name, "skipped": False, "fingerprint": manifest["fingerprint"],
            "seconds": time.perf_counter() - t0}


def load_segments(cfg: SourceConfig, plan: dict) -> list[Segment]:
    out = []
    for seg, eta in enumerate(plan["etas"]):
        fit = C.load_preconditioner(_segments_root(cfg), f"segment-{seg}", storage_options=cfg.storage_options)
        scale = fit.tensors.get(stat_key(SCALE_MODULE, "P_sqrt"))
        out.append(Segment(fit, float(eta), scale, cfg.damping, cfg.damping_mode))
    return out


def _score_config(cfg: SourceConfig, index: str) -> ScoreConfig:
    return ScoreConfig(index=index, **cfg.query_fields(), dtype=cfg.dtype, device=cfg.device, batch_tokens=cfg.batch_tokens,
                       storage_options=cfg.storage_options, progress=False)


def final_query_gradients(cfg: SourceConfig, plan: dict) -> str:
    """The queries' gradients at the last checkpoint (its index's spec), kept in OUTPUT/queries."""
    from ...scoring.queries import cached_query_gradients

    index = plan["indexes"][-1]
    meta = Index(index, cfg.storage_options).meta()
    return cached_query_gradients(meta, _score_config(cfg, index), fsu.join(cfg.output.rstrip("/"), QUERY_FILE))["path"]


def score_source(cfg: SourceConfig, plan: dict, query_file: str) -> dict:
    """sum over segments and their checkpoints of u_l . g_{d,k} / |segment| -> topk.parquet, source.json."""
    from ...guards import checked_topk_table
    from ...index.store import read_grads
    from ...scoring.results import TOPK_FILE, write_table
    from ..tracin.run import open_aligned_indexes, tracin_topk

    t0 = time.perf_counter()
    indexes, metas = open_aligned_indexes(plan["indexes"], cfg.storage_options, "SOURCE")
    segments = load_segments(cfg, plan)
    query = torch.from_numpy(np.asarray(grad_matrix(read_grads(query_file, cfg.storage_options)), dtype=np.float64))
    directions = query_directions(query, segments, int(metas[0]["dataset"]["rows"]))
    per_checkpoint, weights = [], []
    for seg, members in enumerate(plan["groups"]):
        for _ in members:
            per_checkpoint.append(directions[seg].numpy())
            weights.append(1.0 / len(members))  # g_{d,l}: the mean over the segment's checkpoints
    scores, docs = tracin_topk(indexes, metas, per_checkpoint, weights, "inner", cfg.top_k, cfg.block_rows)
    warnings: list[str] = []
    table = checked_topk_table(Index(plan["indexes"][-1], cfg.storage_options), metas[-1], scores, docs, False,
                               warnings)
    out = write_table(table, fsu.join(cfg.output.rstrip("/"), TOPK_FILE), cfg.storage_options)
    summary = {"method": "source", "variant": plan["variant"], "segments": plan["groups"],
               "segment_learning_rates": plan["etas"], "checkpoints": plan["checkpoints"],
               "damping": cfg.damping, "damping_mode": cfg.damping_mode,
               "queries": cfg.queries, "documents": int(metas[0]["dataset"]["rows"]), "top_k": int(scores.shape[1]),
               "output": out, "score_seconds": time.perf_counter() - t0, "warnings": warnings}
    fs, path = fsu.url_to_fs(fsu.join(cfg.output.rstrip("/"), SUMMARY_FILE), cfg.storage_options)
    fsu.write_json(fs, path, summary)
    return summary


# -- without Prefect -----------------------------------------------------------------------------
def build_index_here(bcfg) -> None:
    from ...index.build import build_shard, prepare_build

    plan = prepare_build(bcfg)
    for shard, start, stop in plan.missing():
        build_shard(bcfg, shard, start, stop)


def kfac_stats_here(fcfg: FitConfig) -> None:
    from ...curvature.run import plan_fit, reduce_pass, stats_shard

    for p in plan_fit(fcfg)["passes"]:
        for shard, start, stop in p["shards"]:
            stats_shard(fcfg, p, shard, start, stop)
        reduce_pass(fcfg, p)


def run_source(cfg: SourceConfig) -> dict:
    """The whole method in this process (the flow splits the same steps into tasks)."""
    plan = plan_source(cfg)
    for k in range(len(plan["checkpoints"])):
        build_index_here(build_config(cfg, plan, k))
        kfac_stats_here(kfac_config(cfg, plan, k))
    for seg in range(len(plan["groups"])):
        segment_fit(cfg, plan, seg)
    return score_source(cfg, plan, final_query_gradients(cfg, plan))


def spec_of(cfg: SourceConfig) -> str:
    """A short name of the whole setup (artifact keys)."""
    return spec_hash(cfg.model_dump(exclude={"progress", "device", "storage_options"}))[:10]


__all__ = ["final_query_gradients", "plan_source", "run_source", "score_source", "segment_fit"]
