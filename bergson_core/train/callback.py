"""A gradient store written while training: at chosen steps (the checkpoint steps by default), the
per-document gradients of the whole corpus at the current weights, projected and normalised by the
optimizer's current second moments, are written as an ordinary index (the store format of
`bergson build`, one index per step under a root folder). Each index equals the one `bergson build`
would write afterwards from that checkpoint's model and optimizer state, and can be scored,
preconditioned or fed to `bergson tracin` (its spec names the checkpoint).

Two entry points:
  - `GradientStore.after_step`, the `after_step` hook of this project's trainer (bergson_core.train.trainer);
  - `BergsonCallback`, a Hugging Face `TrainerCallback` writing at every `on_save`.

Adam normalisation (TrackStar, Chang et al. 2024): G / (sqrt(v_hat) + eps) elementwise, through the
same `adam_normalizers` as a build from a saved state, so the two agree exactly: this trainer's
optimizer.safetensors carries no step count (v is used as stored), a torch optimizer's state does
(v is bias-corrected), exactly as `load_normalizers` reads each file back.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from ..config import BuildConfig
from ..index.store import Index

STEP_DIR = "step-{:06d}"


class GradientStore:
    """Writes INDEX_ROOT/step-NNNNNN indexes of `cfg`'s corpus (cfg.index is the root)."""

    def __init__(self, cfg: BuildConfig, tokenizer, every: int = 0, last_step: int | None = None,
                 checkpoint_dir: str | None = None, normalize: bool = True):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.every = every
        self.last_step = last_step
        self.checkpoint_dir = checkpoint_dir
        self.normalize = normalize
        self.written: list[str] = []
        self.seconds = 0.0  # time spent writing, for the overhead measurement

    # -- when ---------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step == self.last_step

    def after_step(self, step: int, model: torch.nn.Module, state: dict) -> None:
        """The `after_step` hook of bergson_core.train.trainer.train (state: {param: {kind: tensor}})."""
        if not self.due(step):
            return
        adam = {name: {"exp_avg_sq": s["exp_avg_sq"]} for name, s in state.items() if "exp_avg_sq" in s}
        checkpoint = os.path.join(self.checkpoint_dir, f"checkpoint-{step}") if self.checkpoint_dir else None
        self.write(step, model, adam or None, checkpoint)

    # -- what ---------------------------------------------------------------------------------
    def write(self, step: int, model: torch.nn.Module, adam_state: dict | None, checkpoint: str | None) -> str:
        """Write the index of step `step`; adam_state {param name: {"exp_avg_sq", ["step", "hp_betas",
        "hp_eps"]}} normalises (when self.normalize); returns the index URL."""
        from ..data.corpus import tokenize_rows
        from ..gradients.extract import compute_gradients, tracked_modules
        from ..gradients.normalizers import adam_normalizers
        from ..index.build import index_meta, open_corpus, plan_shards
        from ..model.loading import LoadedModel

        t0 = time.perf_counter()
        cfg = self.cfg
        url = cfg.index.rstrip("/") + "/" + STEP_DIR.format(step)
        update = {"index": url}
        if checkpoint:  # this trainer's checkpoint-N/model, or a Hugging Face checkpoint-N itself
            for folder in (os.path.join(checkpoint, "model"), checkpoint):
                if os.path.exists(os.path.join(folder, "config.json")):
                    update["model"] = folder
                    break
        normalized = bool(self.normalize and adam_state)
        if normalized and checkpoint and "optimizer_state" in BuildConfig.model_fields:
            update["optimizer_state"] = checkpoint  # the spec then names the state's bytes, as a build's does
        icfg = cfg.model_copy(update=update)
        param = next(model.parameters())
        loaded = LoadedModel(model, self.tokenizer, param.device, param.dtype, threading.Lock())
        modules = tracked_modules(loaded, icfg)
        norms = adam_normalizers(adam_state, modules) if normalized else None
        corpus = open_corpus(icfg.dataset, icfg.split, icfg.storage_options)
        shards = plan_shards(len(corpus), icfg.shard_size)
        meta = index_meta(icfg, modules, corpus, _fingerprint(model, update.get("model")),
                          train_time={"step": step, "checkpoint": checkpoint,
                                      "normalizer": "adam" if normalized else None})
        index = Index(url, icfg.storage_options)
        index.ensure(meta, overwrite=True)
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        was_training = model.training
        model.requires_grad_(False)  # hooks need activation gradients only; no parameter .grad is touched
        model.eval()
        try:
            for shard, start, stop in shards:
                docs = tokenize_rows(corpus, start, stop, self.tokenizer, icfg.max_length, icfg.text_column,
                                     icfg.prompt_column, icfg.completion_column, icfg.id_column)
                grads, stats = compute_gradients(loaded, modules, docs, icfg, icfg.batch_tokens, normalizers=norms)
                index.write_shard(shard, start, [d.doc_id for d in docs], [len(d.input_ids) for d in docs], grads,
                                  icfg.grad_dtype, extra={"tokens": stats.tokens, "empty_documents": stats.empty},
                                  spec_hash=meta["spec_hash"])
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(flags[name])
            model.train(was_training)
        self.written.append(url)
        self.seconds += time.perf_counter() - t0
        return url


def _fingerprint(model: torch.nn.Module, model_dir: str | None) -> str:
    """build.model_fingerprint as a build loading `model_dir` computes it: a loaded config records
    the path it came from (_name_or_path), the in-memory one does not."""
    from ..index.build import model_fingerprint

    old = getattr(model.config, "_name_or_path", "")
    if model_dir:
        model.config._name_or_path = model_dir
    try:
        return model_fingerprint(model)
    finally:
        model.config._name_or_path = old


def torch_adam_state(optimizer, model: torch.nn.Module) -> dict | None:
    """{param name: {"exp_avg_sq", "step", "hp_betas", "hp_eps"}} of a torch Adam/AdamW (or a wrapper
    with .state and .param_groups, like accelerate's), matched to names by parameter identity."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" in st and id(p) in names:
                out[names[id(p)]] = {"exp_avg_sq": st["exp_avg_sq"], "step": st.get("step", 0),
                                     "hp_betas": group.get("betas"), "hp_eps": group.get("eps")}
    return out or None


def hf_callback(store: GradientStore):
    """A transformers `TrainerCallback` writing `store`'s index at every checkpoint save (on_save runs
    after the Trainer has written checkpoint-N, so the index spec can name it)."""
    from transformers import TrainerCallback

    class BergsonCallback(TrainerCallback):
        def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
            if not state.is_world_process_zero:
                return
            step = state.global_step
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{step}")
            adam = torch_adam_state(optimizer, model) if optimizer is not None else None
            store.write(step, model, adam, checkpoint if os.path.isdir(checkpoint) else None)

    return BergsonCallback()
