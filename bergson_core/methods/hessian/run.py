"""The steps of `bergson lissa` and `bergson arnoldi`: load the index's model and corpus, the query
gradients in the index's full layout, the method's (H + lambda I)^-1 on them (precondition), then
their inner products with the stored rows (through the index's projection when it has one)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from ... import fs as fsu
from ...config.estimators import ArnoldiConfig, LissaConfig
from ...errors import ConfigError
from ...index.store import Index, encode_grads, grad_matrix, read_grads
from .operator import Layout, curvature_product, loss_gradients

QUERY_FILE = "preconditioned_queries.arrow"
BATCH_PROBES = 4  # random batches whose largest eigenvalue bounds the scale of a mini-batch LiSSA


def _setup(cfg):
    """(meta, build config, model, layout, corpus docs, query docs, pad id) of the index's model."""
    from ...data.corpus import tokenize_rows
    from ...index.build import check_data_columns, load_for_spec, open_corpus
    from ...model.modules import ModuleInfo
    from ...scoring.score import index_build_config

    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    if len(index.manifests()) != meta["num_shards"]:
        raise ConfigError(f"index {cfg.index} is incomplete: rerun `bergson build` for it")
    if meta["spec"].get("optimizer_state"):
        raise ConfigError(f"index {cfg.index} stores optimizer-normalised gradients: the curvature inverse needs "
                          "raw loss gradients (build it without --optimizer-state)")
    bcfg = index_build_config(meta, cfg)
    loaded, _, corpus = load_for_spec(bcfg)
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    qcols = cfg.query_columns(bcfg)
    check_data_columns(queries, *qcols)
    tok = loaded.tokenizer
    docs = tokenize_rows(corpus, 0, len(corpus), tok, bcfg.max_length, bcfg.text_column, bcfg.prompt_column,
                         bcfg.completion_column, bcfg.id_column)
    qdocs = tokenize_rows(queries, 0, len(queries), tok, bcfg.max_length, *qcols, None)
    modules = [ModuleInfo(**m) for m in meta["modules"]]
    layout = Layout.of(loaded.model, modules, loaded.dtype)
    return meta, bcfg, loaded.model, layout, docs, qdocs, getattr(tok, "pad_token_id", None) or 0


def _product(cfg, model, layout, docs, pad, reduction):
    return curvature_product(model, layout, docs, pad, reduction, cfg.hessian, cfg.curvature_batch)


def _damping(cfg, top: float) -> float:
    return cfg.damping * top if cfg.damping_mode == "relative" else cfg.damping


def lissa_queries(cfg: LissaConfig, model, layout, docs, qgrads, pad, reduction) -> tuple[torch.Tensor, dict]:
    from .lissa import lissa, power_iteration

    full = _product(cfg, model, layout, docs, pad, reduction)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(j: int, v: torch.Tensor) -> torch.Tensor:
        if not cfg.lissa_batch or cfg.lissa_batch >= len(docs):
            return full(v)
        pick = torch.randperm(len(docs), generator=gen)[:cfg.lissa_batch].tolist()
        return _product(cfg, model, layout, [docs[i] for i in pick], pad, reduction)(v)

    top = power_iteration(lambda j, v: full(v), layout.width, cfg.power_steps, qgrads.dtype, cfg.seed)
    if cfg.lissa_batch and cfg.lissa_batch < len(docs):
        # a small batch's curvature reaches far above the corpus mean's: the scale must stay above every
        # step's, or the recursion diverges; the largest over a few random batches stands in for them
        draw = torch.Generator().manual_seed(cfg.seed + 1)
        for _ in range(BATCH_PROBES):
            pick = torch.randperm(len(docs), generator=draw)[:cfg.lissa_batch].tolist()
            batch = _product(cfg, model, layout, [docs[i] for i in pick], pad, reduction)
            top = max(top, power_iteration(lambda j, v: batch(v), layout.width, cfg.power_steps, qgrads.dtype,
                                           cfg.seed))
    damping = _damping(cfg, top)
    scale = cfg.scale or 1.5 * (top + damping)
    out, updates = [], []
    for lo in range(0, qgrads.shape[0], cfg.query_batch):
        res = lissa(step, qgrads[lo:lo + cfg.query_batch], cfg.depth, scale, damping)
        out.append(res.x)
        updates.append(res.updates)
    last = [max(u[j] for u in updates) for j in range(cfg.depth)]
    # a recursion that converges shrinks its updates geometrically; one that grows has diverged (an
    # eigenvalue of H + lambda I not positive, or s too small for a batch's curvature)
    return torch.cat(out), {"largest_eigenvalue": top, "damping": damping, "scale": scale,
                            "relative_update_first": last[0], "relative_update_last": last[-1],
                            "converged": bool(last[-1] < 1e-2 and last[-1] <= last[0]),
                            "relative_updates": last[:: max(1, cfg.depth // 20)]}


def arnoldi_queries(cfg: ArnoldiConfig, model, layout, docs, qgrads, pad, reduction) -> tuple[torch.Tensor, dict]:
    from .arnoldi import arnoldi, subspace_inverse

    full = _product(cfg, model, layout, docs, pad, reduction)
    eig, vec = arnoldi(full, layout.width, cfg.iterations, cfg.rank, qgrads.dtype, cfg.seed)
    damping = _damping(cfg, float(eig.abs().max()))
    if bool(((eig + damping) <= 0).any()):
        raise ConfigError(f"a kept eigenvalue {float(eig.min()):.3g} plus damping {damping:.3g} is not positive: "
                          "use --hessian ggn or more --damping")
    return subspace_inverse(qgrads, eig, vec, damping), {"eigenvalues": eig.tolist(), "damping": damping}


def precondition(cfg) -> dict:
    """The method's preconditioned query rows (in the index's space) written to OUTPUT; returns a summary."""
    from ...curvature.space import Space, project_rows

    t0 = time.perf_counter()
    meta, bcfg, model, layout, docs, qdocs, pad = _setup(cfg)
    qgrads = loss_gradients(model, layout, qdocs, pad, bcfg.loss_reduction).detach()  # [Q, P]
    method = lissa_queries if isinstance(cfg, LissaConfig) else arnoldi_queries
    x, info = method(cfg, model, layout, docs, qgrads, pad, bcfg.loss_reduction)
    space = Space.of(meta["spec"])
    rows = project_rows(x.to(torch.float64), layout.modules, space) if space.projection_dim else x
    rows = rows.detach().cpu().numpy().astype(np.float32)
    data, _ = encode_grads(0, [str(i) for i in range(rows.shape[0])], [0] * rows.shape[0], rows, "float32",
                           what="preconditioned queries")
    url = fsu.join(cfg.output.rstrip("/"), QUERY_FILE)
    fs, path = fsu.url_to_fs(url, cfg.storage_options)
    fsu.write_bytes(fs, path, data)
    return {"path": url, "sha256": hashlib.sha256(data).hexdigest(), "parameters": layout.width,
            "projected": bool(space.projection_dim), "hessian": cfg.hessian, "seconds": time.perf_counter() - t0,
            **info}


def score(cfg, part: dict, name: str) -> dict:
    """<x_q, g_d> over every stored row -> topk.parquet and NAME.json."""
    from ...index.build import open_corpus
    from ...scoring.results import TOPK_FILE, topk_table, write_table
    from ..tracin.run import tracin_topk

    index = Index(cfg.index, cfg.storage_options)
    meta = index.meta()
    x = grad_matrix(read_grads(part["path"], cfg.storage_options))
    scores, docs = tracin_topk([index], [meta], [x], [1.0], "inner", cfg.top_k, cfg.block_rows)
    spec = meta["spec"]
    corpus = open_corpus(spec["dataset"], spec["split"], cfg.storage_options)
    root = cfg.output.rstrip("/")
    out = write_table(topk_table(scores, docs, corpus, spec, aggregated=False), fsu.join(root, TOPK_FILE),
                      cfg.storage_options)
    summary = {"method": name, "index": cfg.index, "queries": cfg.queries, **part,
               "documents": int(meta["dataset"]["rows"]), "top_k": int(scores.shape[1]), "output": out}
    fs, path = fsu.url_to_fs(fsu.join(root, f"{name}.json"), cfg.storage_options)
    fsu.write_json(fs, path, summary)
    return summary


def run(cfg, name: str) -> dict:
    """The whole method without Prefect (the flow runs the same two steps as tasks)."""
    return score(cfg, precondition(cfg), name)
