"""Building an index: validate inputs, plan shards, compute and write one shard.

These are plain functions so a test (or another orchestrator) can drive them without Prefect; the
Prefect tasks in `tasks/` only add retries, caching, tags and artifacts around them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass

import torch

from ..config import CODE_VERSION, BuildConfig
from ..data.chat import check_chat_template, check_conversations
from ..data.corpus import Corpus, check_columns, load_corpus, tokenize_rows
from ..data.rewards import advantages
from ..errors import ConfigError, StoreError
from ..gradients.extract import compute_gradients, tracked_modules
from ..guards import check_row_size
from ..heap import release_free_memory
from ..model.loading import LoadedModel, load_model, parameter_sums
from ..model.modules import ModuleInfo
from ..model.replicas import replica_pool
from .append import CORPUS_KEY, first_segment, prepare_append, renumber, shard_ranges, shard_source
from .stamps import source_stamps
from .store import Index

_corpora: dict[str, Corpus] = {}
_corpora_lock = threading.Lock()
_normalizers: dict[tuple, dict] = {}
_normalizers_lock = threading.Lock()


def open_corpus(uri: str, split: str, storage_options: dict) -> Corpus:
    """load_corpus with a per-process cache, so shard tasks of one run share one reader."""
    key = json.dumps([uri, split, storage_options, _local_stamp(uri)], sort_keys=True, default=str)
    with _corpora_lock:
        if key not in _corpora:
            _corpora[key] = load_corpus(uri, split, storage_options)
        return _corpora[key]


def _local_stamp(uri: str) -> list | None:
    """Size and mtime of a local corpus file: a file changed since it was cached is read again."""
    import os

    try:
        st = os.stat(uri)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def open_normalizers(cfg: BuildConfig, loaded: LoadedModel, modules: list[ModuleInfo]) -> dict | None:
    """The --optimizer-state normalisers of `modules` (None without one), cached per process like
    models; a state that does not fit the model raises NormalizerError (a UserError)."""
    if not cfg.optimizer_state:
        return None
    from ..gradients.normalizers import load_normalizers, state_fingerprint

    key = (state_fingerprint(cfg.optimizer_state), cfg.normalizer, id(loaded.model), tuple(m.name for m in modules))
    with _normalizers_lock:
        if key not in _normalizers:
            _normalizers[key] = load_normalizers(cfg.optimizer_state, loaded.model, modules, cfg.normalizer)
        return _normalizers[key]


def check_optimizer_state(cfg: BuildConfig, meta: dict) -> None:
    """Refuse an optimizer state whose bytes differ from the one the index was built with."""
    want = meta["spec"].get("optimizer_state_sha256")
    if not want:
        return
    from ..gradients.normalizers import state_fingerprint

    if state_fingerprint(cfg.optimizer_state) != want:
        raise ConfigError(
            f"optimizer state {cfg.optimizer_state} changed since index {cfg.index} was built with it: "
            "restore it or rebuild the index"
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """Config plus a cheap checksum of every parameter: changes when the weights change."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, shape, total in parameter_sums(model):
        h.update(f"{name}:{shape}:{total:.10e}".encode())
    return h.hexdigest()[:16]


def check_data_columns(corpus: Corpus, text: str, prompt: str | None, completion: str | None,
                       id_column: str | None = None, conversation: str | None = None,
                       reward: str | None = None, rejected: str | None = None) -> None:
    """Refuse a corpus that lacks the columns the options name (or whose conversations or rewards are
    malformed)."""
    check_columns(corpus, id_column, reward, prompt, rejected)  # the prompt groups rewards even without a completion
    if rejected is not None and (prompt is None or completion is None or conversation is not None):
        raise ConfigError("--rejected-column needs --prompt-column and --completion-column (the chosen completion)")
    if conversation is not None:  # the transcript is the whole document: text/prompt columns unused
        check_columns(corpus, conversation)
        check_conversations(corpus.dataset, conversation, corpus.uri)
    elif completion is None and (prompt is None or reward is not None):  # text documents
        check_columns(corpus, text)
    elif prompt is None or completion is None:
        raise ConfigError("give both --prompt-column and --completion-column, or neither")
    else:
        check_columns(corpus, completion)
    if reward is not None:
        advantages(corpus, reward, prompt)  # a NaN or text reward is refused here, before any write


def checksum_skipped(cfg: BuildConfig, index: Index) -> bool:
    """Whether a build checksums the shards it skips: --verify, else yes for local stores only
    (a remote checksum downloads every shard)."""
    return index.local if cfg.verify is None else cfg.verify


@dataclass
class BuildPlan:
    index: Index
    meta: dict
    shards: list[tuple[int, int, int]]  # (shard id, start row, stop row)
    checksum: bool = True
    bad: dict[int, str] | None = None  # shards found untrustworthy by missing(): id -> why

    def missing(self) -> list[tuple[int, int, int]]:
        """Shards without a manifest, or whose manifest fails verification (they are redone)."""
        from .store import MISSING

        why = self.index.check_shards([s[0] for s in self.shards], self.checksum)  # one listing, not a request per shard
        self.bad = {i: w for i, w in why.items() if w != MISSING}
        return [s for s in self.shards if s[0] in why]


def plan_shards(rows: int, shard_size: int) -> list[tuple[int, int, int]]:
    return [(i, start, min(rows, start + shard_size)) for i, start in enumerate(range(0, rows, shard_size))]


def index_meta(cfg: BuildConfig, modules: list[ModuleInfo], corpus: Corpus, fingerprint: str, **extra) -> dict:
    """The contents of INDEX/index.json (besides its format tag): spec and its hash, model and
    dataset fingerprints, module layout, dtype, shard plan, code version. The one definition, used
    by `bergson build` and by the train-time gradient store (train/callback.py)."""
    return {
        "spec": cfg.spec(),
        "spec_hash": cfg.spec_hash(),
        "code_version": CODE_VERSION,
        "model_fingerprint": fingerprint,
        "dataset": {"uri": cfg.dataset, "fingerprint": corpus.fingerprint, "rows": len(corpus)},
        "modules": [m.to_json() for m in modules],
        "row_width": sum(m.width for m in modules),
        "grad_dtype": cfg.grad_dtype,
        "shard_size": cfg.shard_size,
        "num_shards": len(plan_shards(len(corpus), cfg.shard_size)),
        **extra,
    }


def prepare_build(cfg: BuildConfig, write: bool = True) -> BuildPlan:
    """Validate model, data and options, then create (or check) index.json. Raises UserError."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device} asked for but CUDA is not available: use --device cpu")
    corpus = open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
    check_data_columns(corpus, cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.id_column,
                       cfg.conversation_column, cfg.reward_column, cfg.rejected_column)
    if cfg.loss == "kl" and not (cfg.adapter or cfg.new_lora):
        raise ConfigError("--loss kl compares the adapter model with its base: give --adapter")
    if cfg.loss == "kl" and (cfg.rejected_column or cfg.label_smoothing):
        raise ConfigError("--loss kl takes no --rejected-column or --label-smoothing: drop them")
    loaded = load_model(cfg)
    if cfg.conversation_column:
        check_chat_template(loaded.tokenizer, cfg.model)
    modules = tracked_modules(loaded, cfg)
    check_row_size(sum(m.width for m in modules), min(cfg.shard_size, len(corpus)), cfg.grad_dtype,
                   cfg.projection_dim, len(modules))  # before any allocation or index.json
    open_normalizers(cfg, loaded, modules)  # a state from another model is refused before anything is written
    # stamps of the input files: a rerun with nothing to do can tell without loading anything
    meta = index_meta(cfg, modules, corpus, model_fingerprint(loaded.model), source_stamps=source_stamps(cfg))
    meta[CORPUS_KEY] = [first_segment(cfg, corpus)]  # the corpus list that --append extends (append.py)
    index = Index(cfg.index, cfg.storage_options)
    if cfg.append and (plan := prepare_append(cfg, index, meta, corpus, write)) is not None:
        return plan
    if write:
        index.ensure(meta, overwrite=cfg.overwrite)
        index.remove_partial_writes()
    else:
        index.check(meta, overwrite=cfg.overwrite)
    return BuildPlan(index, meta, shard_ranges(meta), checksum_skipped(cfg, index))


def load_for_spec(cfg: BuildConfig) -> tuple[LoadedModel, list[ModuleInfo], Corpus]:
    loaded = load_model(cfg)
    return loaded, tracked_modules(loaded, cfg), open_corpus(cfg.dataset, cfg.split, cfg.storage_options)


def load_for_index(bcfg: BuildConfig, meta: dict, index_url: str, verb: str) -> tuple[LoadedModel, list[ModuleInfo], Corpus]:
    """load_for_spec for work on an existing index (`verb`: what the user runs, for the message):
    refuse a model whose module layout differs, or a corpus (or appended source) that changed."""
    from .append import check_sources, several_sources

    loaded, modules, corpus = load_for_spec(bcfg)
    if [m.to_json() for m in modules] != meta["modules"]:
        raise StoreError(f"the model's module layout differs from index {index_url}: {verb} with the model it was built with")
    if several_sources(meta):  # an index grown with --append from other files: each must be unchanged
        check_sources(meta, bcfg.storage_options, index_url)
    elif corpus.fingerprint != meta["dataset"]["fingerprint"]:
        raise StoreError(f"the corpus {bcfg.dataset} changed since index {index_url} was built: rebuild the index")
    return loaded, modules, corpus


def build_shard(cfg: BuildConfig, shard: int, start: int, stop: int, on_batch=None) -> dict:
    """Compute and write one shard (skipped when its manifest exists). Returns its manifest
    plus run statistics (tokens, seconds) that are reported but not stored."""
    index = Index(cfg.index, cfg.storage_options)
    if cfg.append:  # rows of one of the index's corpus segments (append.py), published under its spec
        spec_hash, corpus, shift = shard_source(cfg, index, start)
    else:
        spec_hash, corpus, shift = cfg.spec_hash(), None, 0
    redo = None  # why an existing shard is recomputed
    if index.has_shard(shard):
        redo = index.verify_shard(shard, checksum_skipped(cfg, index))
        if redo is None:
            return {**index.manifest(shard), "skipped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        manifest = _compute_and_write(cfg, index, spec_hash, shard, start, stop, on_batch, corpus, shift)
    finally:  # this thread's arena would otherwise keep the shard's freed batches (see heap.py)
        release_free_memory()
    out = {**manifest, "skipped": False, "seconds": time.perf_counter() - t0}
    return {**out, "recomputed": redo} if redo else out


def _compute_and_write(cfg: BuildConfig, index: Index, spec_hash: str, shard: int, start: int, stop: int,
                       on_batch, corpus, shift: int) -> dict:
    corpus = corpus or open_corpus(cfg.dataset, cfg.split, cfg.storage_options)
    with replica_pool(cfg).take() as loaded:  # a free model replica (one per --devices entry)
        modules = tracked_modules(loaded, cfg)
        docs = renumber(tokenize_rows(
            corpus, start - shift, stop - shift, loaded.tokenizer, cfg.max_length,
            cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.id_column, cfg.conversation_column,
            cfg.reward_column, cfg.rejected_column,
        ), shift, cfg.id_column)
        grads, stats = compute_gradients(loaded, modules, docs, cfg, cfg.batch_tokens, on_batch,
                                         normalizers=open_normalizers(cfg, loaded, modules))
    return index.write_shard(
        shard, start, [d.doc_id for d in docs], [len(d.input_ids) for d in docs], grads, cfg.grad_dtype,
        extra={"tokens": stats.tokens, "empty_documents": stats.empty}, spec_hash=spec_hash,
    )
