"""Filling a bank: plan the runs of a recipe, then retrain one run (a subset, or the full corpus)
and store its query losses.

Plain functions over the store, so a test or another orchestrator can drive them without Prefect.
Every run starts from the same init (a copy of the --model weights), uses the recipe's data order
and measures each query's summed loss (only completion tokens when the queries have a prompt and a
completion column). With --subset-mode weights a left-out document has loss weight 0, so the data
order and step count are those of the full run; with drop the trainer only sees the kept documents.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import fs as fsu
from ..config import CODE_VERSION, spec_hash
from ..config.eval import BankOptions
from ..data.corpus import Doc, tokenize_rows
from ..errors import ConfigError
from ..index.build import check_data_columns, model_fingerprint, open_corpus
from ..index.store import cache_root
from ..model.loading import load_model
from ..train.trainer import evaluate_losses, latest_checkpoint, read_trainer_state, train
from .bank import FULL_DIR, FULL_RUN, Bank, subset_run
from .subsets import draw_subsets, mask_digest

_TRAIN_LOCK = threading.Lock()  # one training at a time per process: CPU threads and the GPU are shared
_TOKENIZED: dict[str, tuple[list[Doc], list[Doc]]] = {}
_TOKENIZED_LOCK = threading.Lock()


@dataclass
class BankPlan:
    bank: Bank
    meta: dict
    runs: list[str]  # "full" first, then "subset-00000", ...

    def missing(self) -> list[str]:
        return self.bank.missing(self.runs)


def prepare_bank(cfg: BankOptions, write: bool = True) -> BankPlan:
    """Validate the recipe's model, corpus and queries, draw the subsets, create (or check) the bank."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device} asked for but CUDA is not available: use --device cpu")
    corpus = open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
    check_data_columns(corpus, cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.id_column)
    queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
    check_data_columns(queries, *cfg.query_columns())
    loaded = load_model(training_options(cfg))
    with loaded.lock:
        init = model_fingerprint(loaded.model)
    masks = draw_subsets(len(corpus), cfg.subset_kind, cfg.num_subsets, cfg.subset_fraction,
                         cfg.leave_out_percent, cfg.subset_seed)
    meta = {
        "recipe": cfg.recipe(),
        "init_fingerprint": init,
        "dataset": {"uri": cfg.dataset, "fingerprint": corpus.fingerprint, "rows": len(corpus)},
        "queries": {"uri": cfg.queries, "fingerprint": queries.fingerprint, "rows": len(queries)},
        "num_subsets": int(masks.shape[0]),
        "subset_digests": [mask_digest(m) for m in masks],
        "query_loss": "sum of the query's (completion) token cross-entropies",
        "code_version": CODE_VERSION,
    }
    meta["recipe_hash"] = spec_hash({k: meta[k] for k in ("recipe", "init_fingerprint", "dataset", "queries")})
    bank = Bank(cfg.bank, cfg.storage_options)
    if write:
        bank.ensure(meta, masks, overwrite=cfg.overwrite)
    else:
        bank.check(meta, masks, overwrite=cfg.overwrite)
    return BankPlan(bank, meta, [FULL_RUN] + [subset_run(i) for i in range(masks.shape[0])])


def _tokenized(cfg: BankOptions, tokenizer) -> tuple[list[Doc], list[Doc]]:
    """Training documents and query documents, tokenised once per process and recipe."""
    key = cfg.recipe_hash()
    with _TOKENIZED_LOCK:
        if key not in _TOKENIZED:
            corpus = open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
            queries = open_corpus(cfg.queries, cfg.query_split, cfg.storage_options)
            docs = tokenize_rows(corpus, 0, len(corpus), tokenizer, cfg.max_length, cfg.text_column,
                                 cfg.prompt_column, cfg.completion_column, cfg.id_column)
            qdocs = tokenize_rows(queries, 0, len(queries), tokenizer, cfg.max_length, *cfg.query_columns())
            _TOKENIZED[key] = (docs, qdocs)
        return _TOKENIZED[key]


def training_options(cfg: BankOptions) -> BankOptions:
    """--dtype auto trains in float32 everywhere (auto means bfloat16 on CUDA for index builds)."""
    return cfg.model_copy(update={"dtype": "float32"}) if cfg.dtype == "auto" else cfg


def fresh_model(cfg: BankOptions):
    """A trainable copy of the init weights (the loaded model stays cached and untouched)."""
    loaded = load_model(training_options(cfg))
    with loaded.lock:
        model = copy.deepcopy(loaded.model)
    model.requires_grad_(True)
    return model, loaded


def run_weights(bank: Bank, run: str, num_docs: int) -> np.ndarray:
    """The 0/1 keep mask of a run [N] (all ones for the full run)."""
    if run == FULL_RUN:
        return np.ones(num_docs, dtype=bool)
    return bank.masks()[int(run.split("-")[1])]


def _full_checkpoint_dir(cfg: BankOptions, bank: Bank, recipe_hash: str) -> str:
    if bank.is_local():
        return os.path.join(bank.root, FULL_DIR)
    return os.path.join(cache_root(), "banks", recipe_hash, FULL_DIR)


def retrain(cfg: BankOptions, run: str) -> dict:
    """Train one run from the init and store its query losses; a finished run is skipped.

    Returns the run's manifest plus `skipped` and, for the full run, `checkpoint` (the local folder
    of the final checkpoint, whose `model/` is the model to build an index from)."""
    bank = Bank(cfg.bank, cfg.storage_options)
    if bank.has_run(run):
        _, manifest = bank.read_run(run)
        return {**manifest, "skipped": True}
    meta = bank.meta()
    with _TRAIN_LOCK:
        t0 = time.perf_counter()  # after the lock: waiting for another run is not this run's cost
        model, loaded = fresh_model(cfg)
        docs, qdocs = _tokenized(cfg, loaded.tokenizer)
        keep = run_weights(bank, run, len(docs))
        if cfg.subset_mode == "drop":
            docs, weights = [d for d, k in zip(docs, keep) if k], None
        else:
            weights = torch.from_numpy(keep.astype(np.float64))
        pad = getattr(loaded.tokenizer, "pad_token_id", None) or 0
        ckpt = _full_checkpoint_dir(cfg, bank, meta["recipe_hash"]) if run == FULL_RUN else None
        result = train(model, docs, cfg, weights, pad_id=pad, checkpoint_dir=ckpt, tokenizer=loaded.tokenizer)
        t1 = time.perf_counter()
        losses = evaluate_losses(model, qdocs, pad, loaded.device, reduction="sum").numpy()
        del model
        seconds = time.perf_counter() - t0
    info = {
        "kept": int(keep.sum()),
        "documents": int(len(keep)),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_train_loss": result.loss_history[-1] if result.loss_history else None,
        "train_seconds": t1 - t0,
        "seconds": seconds,
        "device": str(loaded.device),
    }
    if ckpt is not None:
        final = latest_checkpoint(ckpt)
        info["checkpoint"] = _publish(final, bank) if not bank.is_local() else final
        info["lr_history"] = read_trainer_state(final)["lr_history"]
    manifest = bank.write_run(run, losses, info)
    return {**manifest, "skipped": False}


def _publish(local: str, bank: Bank) -> str:
    """Upload a local checkpoint folder into a remote bank; returns its URL."""
    target = fsu.join(bank.url, FULL_DIR, os.path.basename(local))
    for dirpath, _, files in os.walk(local):
        for name in sorted(files):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            with open(src, "rb") as f:
                fsu.write_bytes(bank.fs, fsu.join(bank.root, FULL_DIR, os.path.basename(local), rel), f.read())
    return target


def full_model_path(cfg: BankOptions) -> str:
    """Local folder of the model trained on every document (train the full run first)."""
    bank = Bank(cfg.bank, cfg.storage_options)
    meta = bank.meta()
    final = latest_checkpoint(_full_checkpoint_dir(cfg, bank, meta["recipe_hash"]))
    if final is None or not bank.has_run(FULL_RUN):
        raise ConfigError(f"bank {cfg.bank} has no trained full model yet: run `bergson validate` first")
    return os.path.join(final, "model")
