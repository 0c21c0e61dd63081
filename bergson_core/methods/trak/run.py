"""The steps of `bergson trak` (each a plain function; the flow runs one task per model, then the score).

Per model k (index k): the query gradients with index k's spec (the one query-gradient cache), the
losses of the corpus and of the queries under model k (for TRAK's 1 - p), Phi^T Phi streamed over
index k's shards, its damped inverse, and u_q = (Phi^T Phi + lambda I)^-1 g_q / (1 - p_q), written as
OUTPUT/models/model-k.arrow. Then one streaming pass over every index's shards together sums
<u_q^k, g_i^k> / M (the ensemble mean) and keeps the top-k per query.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ... import fs as fsu
from ...config.curvature import DampingOptions
from ...config.estimators import TrakConfig
from ...errors import ConfigError
from ...index.store import Index, encode_grads, grad_matrix, read_grads
from .kernel import inverse_kernel, kernel_update, lm_queries, one_minus_p, output_gradients

SUMMARY_FILE = "trak.json"
QUERY_DIR = "queries"
MODEL_DIR = "models"


def open_indexes(cfg: TrakConfig) -> tuple[list[Index], list[dict]]:
    """The ensemble's indexes (same corpus, same shards), each narrow enough for its kernel."""
    from ..tracin.run import open_aligned_indexes

    if not cfg.indexes:
        raise ConfigError("give one index per model: --indexes INDEX [INDEX ...]")
    indexes, metas = open_aligned_indexes(cfg.indexes, cfg.storage_options, "TRAK")
    for ix, meta in zip(indexes, metas):
        if meta["row_width"] > cfg.max_kernel_dim:
            raise ConfigError(f"index {ix.url} has {meta['row_width']} columns, more than --max-kernel-dim "
                              f"{cfg.max_kernel_dim}: build it with a smaller --projection-dim")
    return indexes, metas


def model_losses(cfg: TrakConfig, meta: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses [Q] of the queries and [N] of the corpus under index k's model, with its loss reduction."""
    from ...data.corpus import tokenize_rows
    from ...index.build import load_for_spec, open_corpus
    from ...scoring.score import index_build_config
    from ...train.trainer import evaluate_losses
    from ..tracin.run import score_config

    scfg = score_config(cfg, cfg.indexes[k])
    bcfg = index_build_config(meta, scfg)
    loaded, _, corpus = load_for_spec(bcfg)
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    device = next(loaded.model.parameters()).device

    def losses(data, columns, id_column):
        docs = tokenize_rows(data, 0, len(data), loaded.tokenizer, bcfg.max_length, *columns, id_column)
        return evaluate_losses(loaded.model, docs, pad, device, bcfg.loss_reduction)

    q = losses(queries, cfg.query_columns(bcfg), None)
    d = losses(corpus, (bcfg.text_column, bcfg.prompt_column, bcfg.completion_column), bcfg.id_column)
    return q, d


def gram_matrix(index: Index, width: int, losses: torch.Tensor, block_rows: int) -> torch.Tensor:
    """Phi^T Phi [D, D] (float64) from the stored loss gradients and the documents' losses [N],
    streamed over the index's shards in blocks of rows."""
    gram = torch.zeros(width, width, dtype=torch.float64)
    for shard in index.manifests():
        grads = grad_matrix(index.open_shard(shard["shard"]))  # [n, D]
        for lo in range(0, grads.shape[0], block_rows):
            block = torch.from_numpy(np.asarray(grads[lo:lo + block_rows], dtype=np.float64))
            start = shard["start"] + lo
            kernel_update(gram, output_gradients(block, losses[start:start + block.shape[0]]))
    return gram


def model_queries(cfg: TrakConfig, k: int) -> dict:
    """One model's work: u_q [Q, D] written to OUTPUT/models/model-k.arrow; returns its summary."""
    from ...scoring.queries import cached_query_gradients
    from ..tracin.run import score_config

    index = Index(cfg.indexes[k], cfg.storage_options)
    meta = index.meta()
    root = cfg.output.rstrip("/")
    qfile = cached_query_gradients(meta, score_config(cfg, cfg.indexes[k]), fsu.join(root, QUERY_DIR, f"model-{k}"))
    g_q = torch.from_numpy(grad_matrix(read_grads(qfile["path"], cfg.storage_options)).astype(np.float64))
    q_loss, d_loss = model_losses(cfg, meta, k)
    gram = gram_matrix(index, meta["row_width"], d_loss, cfg.block_rows)
    damping = DampingOptions(**{f: getattr(cfg, f) for f in DampingOptions.model_fields})
    u = lm_queries(g_q, q_loss, inverse_kernel(gram, damping))  # [Q, D]
    data, _ = encode_grads(0, [str(i) for i in range(u.shape[0])], [0] * u.shape[0],
                           u.numpy().astype(np.float32), "float32", what="TRAK queries")
    url = fsu.join(root, MODEL_DIR, f"model-{k}.arrow")
    fs, path = fsu.url_to_fs(url, cfg.storage_options)
    fsu.write_bytes(fs, path, data)
    return {"model": meta["spec"]["model"], "index": cfg.indexes[k], "path": url,
            "sha256": hashlib.sha256(data).hexdigest(),
            "mean_one_minus_p_corpus": float(one_minus_p(d_loss).mean()),
            "mean_one_minus_p_queries": float(one_minus_p(q_loss).mean()),
            "kernel_trace": float(gram.trace()), "width": int(meta["row_width"])}


def ensemble_scores(cfg: TrakConfig, parts: list[dict]) -> dict:
    """The ensemble mean of <u_q^k, g_i^k> over every document, top-k kept; topk.parquet + trak.json."""
    from ...index.build import open_corpus
    from ...scoring.results import TOPK_FILE, topk_table, write_table
    from ..tracin.run import tracin_topk

    indexes, metas = open_indexes(cfg)
    queries = [grad_matrix(read_grads(p["path"], cfg.storage_options)) for p in parts]
    m = len(indexes)
    scores, docs = tracin_topk(indexes, metas, queries, [1.0 / m] * m, "inner", cfg.top_k, cfg.block_rows)
    spec = metas[0]["spec"]
    corpus = open_corpus(spec["dataset"], spec["split"], cfg.storage_options)
    root = cfg.output.rstrip("/")
    out = write_table(topk_table(scores, docs, corpus, spec, aggregated=False), fsu.join(root, TOPK_FILE),
                      cfg.storage_options)
    summary = {"method": "trak", "indexes": cfg.indexes, "models": parts, "damping": cfg.damping,
               "damping_mode": cfg.damping_mode, "pseudo_inverse": cfg.pseudo_inverse, "queries": cfg.queries,
               "documents": int(metas[0]["dataset"]["rows"]), "top_k": int(scores.shape[1]), "output": out}
    fs, path = fsu.url_to_fs(fsu.join(root, SUMMARY_FILE), cfg.storage_options)
    fsu.write_json(fs, path, summary)
    return summary


def run_trak(cfg: TrakConfig) -> dict:
    """The whole method without Prefect (the flow runs the same steps as tasks)."""
    open_indexes(cfg)
    return ensemble_scores(cfg, [model_queries(cfg, k) for k in range(len(cfg.indexes))])
