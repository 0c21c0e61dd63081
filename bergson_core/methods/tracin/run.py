"""Multi-checkpoint TracIn (Pruthi et al. 2020, "Estimating Training Data Influence by Tracing
Gradient Descent"), from one stored gradient index per training checkpoint:

    TracIn(q, d) = sum_k eta_k * <g_q(theta_k), g_d(theta_k)>

with eta_k the learning rate of checkpoint k, read from the trainer's history (trainer_state.json
next to the checkpoint's model folder), or given. Each index is built with the ordinary build path
(`bergson build --model CHECKPOINT/model`, optionally with that checkpoint's optimizer state as the
normaliser); the query gradients of checkpoint k are computed with index k's own spec. Scoring
streams shard i of every index together, so memory stays bounded by one block per checkpoint.
A positive score means that the document's training steps lowered the query loss.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ...config import ScoreConfig
from ...config.dynamics import TracInConfig
from ...errors import ConfigError, StoreError
from ...index.store import Index, grad_matrix

SUMMARY_FILE = "tracin.json"
QUERY_DIR = "queries"


def checkpoint_folder(model_path: str) -> str | None:
    """The trainer checkpoint a model folder belongs to: itself or its parent, whichever holds
    trainer_state.json; None when neither does."""
    from ...train.trainer import STATE_FILE

    for folder in (model_path, os.path.dirname(model_path.rstrip("/"))):
        if folder and os.path.exists(os.path.join(folder, STATE_FILE)):
            return folder
    return None


def checkpoint_learning_rates(model_paths: list[str], mode: str = "checkpoint") -> list[float]:
    """eta_k of each checkpoint (in training order) from its trainer_state.json.

    checkpoint: the learning rate of the last step before the checkpoint (Pruthi et al.'s eta_k);
    interval: the sum of the learning rates of the steps since the previous checkpoint (or since the
    start for the first), i.e. the total step size the checkpoint stands for.
    """
    from ...train.trainer import read_trainer_state

    out, prev = [], 0
    for path in model_paths:
        folder = checkpoint_folder(path)
        if folder is None:
            raise ConfigError(f"model {path} has no trainer_state.json beside it: pass --learning-rates")
        state = read_trainer_state(folder)
        hist, step = state["lr_history"], state["step"]
        if step <= prev:
            raise ConfigError(f"checkpoints must be in training order: {path} is at step {step}, after step {prev}")
        out.append(float(hist[step - 1]) if mode == "checkpoint" else float(sum(hist[prev:step])))
        prev = step
    return out


def open_indexes(cfg: TracInConfig) -> tuple[list[Index], list[dict]]:
    """The checkpoint indexes, checked to hold the same corpus in the same shards."""
    if not cfg.indexes:
        raise ConfigError("give one index per checkpoint: --indexes INDEX [INDEX ...]")
    return open_aligned_indexes(cfg.indexes, cfg.storage_options, "TracIn")


def open_aligned_indexes(urls: list[str], storage_options: dict, method: str) -> tuple[list[Index], list[dict]]:
    """Complete indexes of the same corpus in the same shards (scored shard by shard together)."""
    indexes = [Index(u, storage_options) for u in urls]
    metas = [ix.meta() for ix in indexes]
    first = metas[0]
    for ix, meta in zip(indexes[1:], metas[1:]):
        for key in ("dataset", "shard_size", "num_shards"):
            if meta[key] != first[key]:
                raise StoreError(f"index {ix.url} differs from {indexes[0].url} in {key}: {method} needs every "
                                 "checkpoint's index built over the same corpus with the same --shard-size")
    for ix, meta in zip(indexes, metas):
        if len(ix.manifests()) != meta["num_shards"]:
            raise StoreError(f"index {ix.url} is incomplete: rerun `bergson build` for it")
    return indexes, metas


def learning_rates(cfg: TracInConfig, metas: list[dict]) -> list[float]:
    if cfg.learning_rates is not None:
        if len(cfg.learning_rates) != len(metas):
            raise ConfigError(f"{len(cfg.learning_rates)} learning rates for {len(metas)} indexes")
        return list(cfg.learning_rates)
    return checkpoint_learning_rates([m["spec"]["model"] for m in metas], cfg.lr_weight)


def score_config(cfg: TracInConfig, index: str) -> ScoreConfig:
    return ScoreConfig(index=index, **cfg.query_fields(), device=cfg.device, batch_tokens=cfg.batch_tokens, storage_options=cfg.storage_options,
                       progress=False)


def checkpoint_query_gradients(cfg: TracInConfig, k: int) -> np.ndarray:
    """Query gradients [Q, D] at checkpoint k, with index k's spec (model, projection, normaliser)."""
    from ...scoring.score import query_gradients

    meta = Index(cfg.indexes[k], cfg.storage_options).meta()
    return query_gradients(meta, score_config(cfg, cfg.indexes[k])).grads


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)


def tracin_topk(indexes: list[Index], metas: list[dict], queries: list[np.ndarray], lrs: list[float],
                metric: str = "inner", top_k: int = 0, block_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [Q, k], doc indices [Q, k]) of sum_k lr_k * score_k(q, d); top_k 0 = all."""
    from ...scoring.score import TopK

    rows = metas[0]["dataset"]["rows"]
    qs = []
    for ix, meta, q in zip(indexes, metas, queries):
        if q.shape[1] != meta["row_width"]:
            raise StoreError(f"query gradients have {q.shape[1]} columns, index {ix.url} has {meta['row_width']}")
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64))  # [Q, D_k]
        qs.append(_unit(qt) if metric == "cosine" else qt)
    top = TopK(qs[0].shape[0], top_k or rows)
    for shard in indexes[0].manifests():
        grads = [grad_matrix(ix.open_shard(shard["shard"])) for ix in indexes]  # [n, D_k] each
        for lo in range(0, grads[0].shape[0], block_rows):
            total = None
            for qt, g, lr in zip(qs, grads, lrs):
                d = torch.from_numpy(np.asarray(g[lo:lo + block_rows], dtype=np.float64))  # [n, D_k]
                if metric == "cosine":
                    d = _unit(d)
                s = lr * (qt @ d.T)  # [Q, n]
                total = s if total is None else total + s
            top.add(total, shard["start"] + lo)
    return top.scores.numpy(), top.docs.numpy()


def write_tracin(cfg: TracInConfig, metas: list[dict], scores: np.ndarray, docs: np.ndarray, lrs: list[float]) -> dict:
    """topk.parquet (the `bergson score` layout, usable by `bergson validate`) and tracin.json."""
    from ... import fs as fsu
    from ...guards import checked_topk_table
    from ...scoring.results import TOPK_FILE, write_table

    warnings: list[str] = []
    table = checked_topk_table(Index(cfg.indexes[0], cfg.storage_options), metas[0], scores, docs, False, warnings)
    out = write_table(table, fsu.join(cfg.output.rstrip("/"), TOPK_FILE), cfg.storage_options)
    summary = {"method": "tracin", "indexes": cfg.indexes, "models": [m["spec"]["model"] for m in metas],
               "learning_rates": lrs, "lr_weight": "given" if cfg.learning_rates is not None else cfg.lr_weight,
               "metric": cfg.metric, "queries": cfg.queries, "documents": int(metas[0]["dataset"]["rows"]),
               "top_k": int(scores.shape[1]), "output": out, "warnings": warnings}
    fs, path = fsu.url_to_fs(fsu.join(cfg.output.rstrip("/"), SUMMARY_FILE), cfg.storage_options)
    fsu.write_json(fs, path, summary)
    return summary


def run_tracin(cfg: TracInConfig) -> dict:
    """The whole method without Prefect (the flow splits the same steps into tasks)."""
    indexes, metas = open_indexes(cfg)
    lrs = learning_rates(cfg, metas)
    queries = [checkpoint_query_gradients(cfg, k) for k in range(len(indexes))]
    scores, docs = tracin_topk(indexes, metas, queries, lrs, cfg.metric, cfg.top_k, cfg.block_rows)
    return write_tracin(cfg, metas, scores, docs, lrs)
