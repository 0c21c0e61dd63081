"""The plain steps of `bergson magic` (what its tasks call): load the recipe, compute one part of the
queries' metagradients (resumable, bergson_core.methods.magic.state), write the score tables.
The algorithm itself is metagrad.py."""

from __future__ import annotations

from collections.abc import Callable

from ...data.corpus import Doc
from .metagrad import metagradients

# -- the command: inputs from a recipe, outputs as a score file ------------------------------------
MAGIC_FILE = "magic.json"
PARTS_DIR = "parts"
STATE_SUFFIX = ".state"  # OUTPUT/parts/<lo>-<hi>.state: progress of an unfinished part


def query_chunks(num_queries: int, per_task: int) -> list[tuple[int, int]]:
    step = per_task or max(num_queries, 1)
    return [(lo, min(num_queries, lo + step)) for lo in range(0, num_queries, step)]


def load_recipe(cfg):
    """(fresh trainable model, documents, query documents, pad id) of a MagicConfig."""
    import copy

    from ...data.corpus import tokenize_rows
    from ...index.build import check_data_columns, open_corpus

    corpus = open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
    check_data_columns(corpus, cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.id_column)
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    qcols = cfg.query_columns()
    check_data_columns(queries, *qcols)
    loaded = _loaded(cfg)
    with loaded.lock:
        model = copy.deepcopy(loaded.model)
    model.requires_grad_(True)
    docs = _documents(cfg, corpus, loaded.tokenizer)
    qdocs = tokenize_rows(queries, 0, len(queries), loaded.tokenizer, cfg.max_length, *qcols)
    pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
    return model, docs, qdocs, pad


def _loaded(cfg):
    from ...model.loading import load_model

    return load_model(cfg.model_copy(update={"dtype": "float32"}) if cfg.dtype == "auto" else cfg)


def _documents(cfg, corpus, tokenizer) -> list[Doc]:
    from ...data.corpus import tokenize_rows

    return tokenize_rows(corpus, 0, len(corpus), tokenizer, cfg.max_length, cfg.text_column, cfg.prompt_column,
                         cfg.completion_column, cfg.id_column)


def part_key(cfg, lo: int, hi: int) -> str:
    from ...config import spec_hash

    recipe = cfg.model_dump(exclude={"output", "queries_per_task", "query_batch", "device", "storage_options"})
    return spec_hash({"recipe": recipe, "queries": [lo, hi]})


def _safetensors_metadata(data: bytes) -> dict:
    import json
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def run_part(cfg, lo: int, hi: int, on_step: Callable[[str, int], None] | None = None) -> dict:
    """Metagradients [hi - lo, N] of queries [lo, hi) (or [1, N] of their sum), saved as
    OUTPUT/parts/<lo>-<hi>.safetensors; a part already there with the same recipe key is reused,
    so a killed run resumes. Within the part, progress is saved under OUTPUT/parts/<lo>-<hi>.state
    (bergson_core.methods.magic.state), so a part killed in its forward or backward phase continues where
    it stopped; the folder is deleted once the part's file is written. `on_step`: see metagradients."""
    import json

    from safetensors.torch import save

    from ... import fs as fsu
    from . import tokens as magic_tokens
    from .state import StateStore

    base = fsu.join(cfg.output.rstrip("/"), PARTS_DIR, f"{lo:06d}-{hi:06d}")
    path = base + ".safetensors"
    key = part_key(cfg, lo, hi)
    fs, local = fsu.url_to_fs(path, cfg.storage_options)
    if fsu.exists(fs, local):
        with fs.open(local, "rb") as f:
            meta = _safetensors_metadata(f.read())
        if meta.get("key") == key:
            return {"path": path, "reused": True, **json.loads(meta.get("stats", "{}"))}
    model, docs, qdocs, pad = load_recipe(cfg)
    store = StateStore(base + STATE_SUFFIX, key, cfg.storage_options)
    weights = magic_tokens.ones(docs) if cfg.weights == "token" else None
    grads, stats = metagradients(model, docs, qdocs[lo:hi], cfg, weights=weights, schedule=cfg.checkpointing,
                                 pad_id=pad, per_query=cfg.aggregate == "individual",
                                 query_batch=cfg.query_batch, store=store, on_step=on_step)
    info = {"schedule": stats.schedule, "steps": stats.steps, "forward_steps": stats.forward_steps,
            "backward_steps": stats.backward_steps, "peak_states": stats.peak_states,
            "state_bytes": stats.state_bytes, "peak_bytes": stats.peak_bytes, "seconds": stats.seconds}
    data = save({"metagradients": grads.contiguous()}, metadata={"key": key, "stats": json.dumps(info)})
    fsu.write_bytes(fs, local, data)
    store.clear()  # the part's file is the result now; its progress is no longer needed
    return {"path": path, "reused": False, **info}


def write_scores(cfg, parts: list[dict]) -> dict:
    """topk.parquet with every (query, document): score = -dQ_q/dw_d, ranked per query (query_index
    -1 for the summed queries), and magic.json with the run's memory and time. With per-token
    weights, the document score is the sum over its tokens, and token_scores.parquet holds each."""
    import numpy as np
    import pyarrow as pa
    from safetensors.torch import load

    from ... import fs as fsu
    from ...index.build import open_corpus
    from ...scoring.results import TOPK_FILE, write_table
    from . import tokens as magic_tokens

    blocks = []
    for part in parts:
        fs, path = fsu.url_to_fs(part["path"], cfg.storage_options)
        with fs.open(path, "rb") as f:
            blocks.append(load(f.read())["metagradients"].numpy())
    scores = -np.concatenate(blocks)  # [Q, N] or, per token, [Q, N, L]
    if cfg.aggregate == "sum":
        scores = scores.sum(axis=0, keepdims=True)
    corpus = open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
    ids = [str(i) for i in corpus.dataset[cfg.id_column]] if cfg.id_column else [str(i) for i in range(len(corpus))]
    query_index = np.arange(scores.shape[0]) if cfg.aggregate == "individual" else np.full(1, -1)
    token_out = None
    if cfg.weights == "token":
        tokenizer = _loaded(cfg).tokenizer
        table = magic_tokens.token_table(scores, _documents(cfg, corpus, tokenizer), ids, tokenizer, query_index)
        token_out = write_table(table, fsu.join(cfg.output.rstrip("/"), magic_tokens.TOKEN_SCORES_FILE),
                                cfg.storage_options)
        scores = scores.sum(axis=2)  # [Q, N]: a document's weight moves all its token weights together
    order = np.argsort(-scores, axis=1, kind="stable")  # [Q, N]
    q = np.repeat(np.arange(scores.shape[0]), scores.shape[1])
    d = order.ravel()
    table = pa.table({
        "query_index": pa.array(query_index[q], pa.int64()),
        "rank": pa.array(np.tile(np.arange(scores.shape[1]), scores.shape[0]), pa.int32()),
        "doc_index": pa.array(d, pa.int64()),
        "score": pa.array(scores[q, d], pa.float64()),
        "doc_id": pa.array([ids[i] for i in d], pa.string()),
    })
    out = write_table(table, fsu.join(cfg.output.rstrip("/"), TOPK_FILE), cfg.storage_options)
    summary = {
        "method": "magic", "output": out, "queries": int(scores.shape[0]), "documents": int(scores.shape[1]),
        "checkpointing": cfg.checkpointing, "aggregate": cfg.aggregate, "optimizer": cfg.optimizer,
        "weights": cfg.weights, "token_output": token_out,
        "steps": parts[0].get("steps") if parts else 0,
        "peak_states": max((p.get("peak_states", 0) for p in parts), default=0),
        "peak_state_bytes": max((p.get("peak_bytes", 0) for p in parts), default=0),
        "forward_steps": sum(p.get("forward_steps", 0) for p in parts),
        "backward_steps": sum(p.get("backward_steps", 0) for p in parts),
        "compute_seconds": sum(p.get("seconds", 0.0) for p in parts),
        "parts": [{"path": p["path"], "reused": p["reused"]} for p in parts],
    }
    fs, path = fsu.url_to_fs(fsu.join(cfg.output.rstrip("/"), MAGIC_FILE), cfg.storage_options)
    fsu.write_json(fs, path, summary)
    return summary


def run_magic(cfg) -> dict:
    """The whole command without Prefect (the flow runs the parts as tasks)."""
    from ...index.build import open_corpus

    n = len(open_corpus(cfg.queries, cfg.query_split, cfg.storage_options))
    return write_scores(cfg, [run_part(cfg, lo, hi) for lo, hi in query_chunks(n, cfg.queries_per_task)])
