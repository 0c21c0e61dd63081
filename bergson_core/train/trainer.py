"""A small, exact, deterministic trainer for causal LMs.

What it does, and nothing more: AdamW or SGD written as pure tensor functions (train/optim.py, so
that MAGIC can differentiate through a step), a linear warmup then linear decay (or constant) learning rate, a
seeded data order that depends only on (seed, epoch), a loss weight per document (or per token),
gradient accumulation, and checkpoints that hold the weights (a Hugging Face folder, safetensors), the
optimizer state (safetensors + JSON, no pickle) and the learning-rate history.

The loss of one optimizer step is

    L_step = sum_{d in step} w_d * loss_d / (batch_size * grad_accum)

with loss_d the sum or mean of document d's next-token cross-entropy. The denominator is fixed, so
the trained weights are a function of w alone: a document with w_d = 0 is exactly absent, which
is how `validate` retrains on a subset without changing the data order (and what MAGIC-style
metagradients differentiate).

The order of step s is a pure function of (seed, epoch), so a run resumed from a checkpoint takes
the same batches, and gives the same weights, as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config.eval import TrainOptions
from ..data.batching import collate
from ..data.corpus import Doc
from ..model.loss import document_losses
from .optim import UPDATES, adamw_update, init_state, init_states, sgd_update  # noqa: F401  (re-exported)

MODEL_DIR = "model"  # Hugging Face folder (config, safetensors weights, tokenizer)
OPTIMIZER_FILE = "optimizer.safetensors"  # "<param>.exp_avg", "<param>.exp_avg_sq" | "<param>.momentum_buffer"
STATE_FILE = "trainer_state.json"  # step, learning-rate and loss history, options (written last)


# -- schedule and data order ------------------------------------------------------------------------
def steps_per_epoch(num_docs: int, opts: TrainOptions) -> int:
    return max(1, math.ceil(num_docs / (opts.batch_size * opts.grad_accum)))


def total_steps(num_docs: int, opts: TrainOptions) -> int:
    return steps_per_epoch(num_docs, opts) * opts.epochs


def learning_rate(step: int, total: int, opts: TrainOptions) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup reaching lr at step
    warmup_steps - 1, then a straight line down that would reach 0 at step `total` (or constant)."""
    if opts.warmup_steps and step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    if opts.schedule == "constant":
        return opts.lr
    peak = max(opts.warmup_steps, 1) - 1  # the step at full lr; a straight line from there to 0 at `total`
    return opts.lr * (total - step) / max(1, total - peak)


def epoch_order(num_docs: int, epoch: int, seed: int) -> list[int]:
    """The document order of one epoch: a permutation from a CPU generator seeded by (seed, epoch)."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_docs, generator=gen).tolist()


def step_batches(num_docs: int, step: int, opts: TrainOptions) -> list[list[int]]:
    """The micro-batches (document positions) of optimizer step `step`."""
    per = steps_per_epoch(num_docs, opts)
    epoch, within = divmod(step, per)
    chunk = opts.batch_size * opts.grad_accum
    rows = epoch_order(num_docs, epoch, opts.train_seed)[within * chunk:(within + 1) * chunk]
    return [rows[i:i + opts.batch_size] for i in range(0, len(rows), opts.batch_size)]


# -- losses ---------------------------------------------------------------------------------------
def model_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 reduction: str = "sum", token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """bergson_core.model.loss.document_losses of a forward pass of `model` [B], in the model's dtype."""
    return document_losses(model(input_ids=ids, attention_mask=mask).logits, labels, reduction, token_weights)


@torch.no_grad()
def evaluate_losses(model: torch.nn.Module, docs: list[Doc], pad_id: int, device, reduction: str = "sum",
                    batch_size: int = 64) -> torch.Tensor:
    """Loss of each document [N] (float64), e.g. the query losses of a retrained model."""
    out = []
    for i in range(0, len(docs), batch_size):
        ids, mask, labels = collate(docs[i:i + batch_size], pad_id, device)
        out.append(model_losses(model, ids, mask, labels, reduction).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    steps: int
    lr_history: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)  # the weighted step loss L_step
    seconds: float = 0.0
    resumed_from: int = 0


def train(model: torch.nn.Module, docs: list[Doc], opts: TrainOptions, weights: torch.Tensor | None = None,
          pad_id: int = 0, checkpoint_dir: str | None = None, tokenizer=None,
          on_step: Callable[[int, float, float], None] | None = None, stop_after: int | None = None,
          after_step: Callable[[int, torch.nn.Module, dict], None] | None = None) -> TrainResult:
    """Train `model` in place on `docs` with per-document loss `weights` [N] (default all ones), or
    per-token weights [N, L] (L at least the longest document; w[d, t] weighs the loss of predicting
    document d's token t).

    With `checkpoint_dir`, the run resumes from the latest checkpoint there, saves one every
    `checkpoint_every` steps and always after the last step. `stop_after` ends the loop early
    (after that many steps in total), as a crash would, for tests of resumption. `after_step(steps
    done, model, optimizer state {param: {kind: tensor}})` runs after each update and after the
    checkpoint of that step is saved (e.g. a train-time gradient store).
    """
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    n = len(docs)
    total = total_steps(n, opts)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.detach().to(torch.float64).cpu()
    longest = max((len(d.input_ids) for d in docs), default=0)
    if w.shape != (n,) and (w.dim() != 2 or w.shape[0] != n or w.shape[1] < longest):
        raise ValueError(f"weights must have one entry per document ({n}) or per document and token ({n}, "
                         f"{longest} or more), got shape {tuple(w.shape)}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    state = init_states(model, params, opts)
    result = TrainResult(steps=0)
    if checkpoint_dir:
        latest = latest_checkpoint(checkpoint_dir)
        if latest is not None:
            result = _restore(latest, model, params, state, opts)
    update = UPDATES[opts.optimizer]
    denom = opts.batch_size * opts.grad_accum
    dtype = next(iter(params.values())).dtype
    model.eval()  # no dropout: a step is a pure function of the weights and the batch
    for step in range(result.steps, total):
        if stop_after is not None and step >= stop_after:
            break
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        step_loss = 0.0
        for rows in step_batches(n, step, opts):
            ids, mask, labels = collate([docs[r] for r in rows], pad_id, device)
            if w.dim() == 1:
                lw = w[rows].to(device=device, dtype=dtype)  # [B]
                loss = (model_losses(model, ids, mask, labels, opts.train_loss) * lw).sum() / denom
            else:
                tw = w[rows, :ids.shape[1]].to(device=device, dtype=dtype)  # [B, T]
                loss = model_losses(model, ids, mask, labels, opts.train_loss, tw).sum() / denom
            for g, p_grad in zip(grads.values(), torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
                if p_grad is not None:
                    g += p_grad
            step_loss += loss.item()
        lr = learning_rate(step, total, opts)
        with torch.no_grad():
            for name, p in params.items():
                new_p, state[name] = update(p, grads[name], state[name], step + 1, lr, opts)
                p.copy_(new_p)
        result.steps = step + 1
        result.lr_history.append(lr)
        result.loss_history.append(step_loss)
        if on_step:
            on_step(step, lr, step_loss)
        last = step + 1 == total
        if checkpoint_dir and (last or (opts.checkpoint_every and (step + 1) % opts.checkpoint_every == 0)):
            save_checkpoint(os.path.join(checkpoint_dir, f"checkpoint-{step + 1}"), model, state, result, opts,
                            tokenizer)
        if after_step:
            after_step(step + 1, model, state)
    result.seconds = time.perf_counter() - t0
    return result


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: str, model: torch.nn.Module, state: dict[str, dict[str, torch.Tensor]],
                    result: TrainResult, opts: TrainOptions, tokenizer=None) -> str:
    """Weights (HF folder), optimizer state (safetensors) and trainer_state.json, the last written."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    model.save_pretrained(os.path.join(path, MODEL_DIR), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(path, MODEL_DIR))
    flat = {f"{name}.{k}": t.detach().contiguous().cpu() for name, s in state.items() for k, t in s.items()}
    tmp = os.path.join(path, OPTIMIZER_FILE + ".tmp")
    save_file(flat, tmp, metadata={"optimizer": opts.optimizer, "step": str(result.steps)})
    os.replace(tmp, os.path.join(path, OPTIMIZER_FILE))
    info = {
        "step": result.steps,
        "optimizer": opts.optimizer,
        "hyperparameters": opts.model_dump(),
        "lr_history": result.lr_history,
        "loss_history": result.loss_history,
    }
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(path, STATE_FILE))  # last: a checkpoint without it is incomplete
    return path


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The complete checkpoint with the highest step under checkpoint_dir, or None."""
    if not os.path.isdir(checkpoint_dir):
        return None
    found = []
    for name in os.listdir(checkpoint_dir):
        full = os.path.join(checkpoint_dir, name)
        if name.startswith("checkpoint-") and os.path.exists(os.path.join(full, STATE_FILE)):
            found.append((int(name.split("-", 1)[1]), full))
    return max(found)[1] if found else None


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def load_optimizer_tensors(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """{param name: {"exp_avg": ..., "exp_avg_sq": ...} | {"momentum_buffer": ...}} of a checkpoint."""
    from safetensors.torch import load_file

    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(os.path.join(path, OPTIMIZER_FILE)).items():
        name, kind = key.rsplit(".", 1)
        out.setdefault(name, {})[kind] = t
    return out


def _restore(path: str, model, params, state, opts: TrainOptions) -> TrainResult:
    from safetensors.torch import load_file

    info = read_trainer_state(path)
    if info["hyperparameters"] != opts.model_dump():
        raise ValueError(f"checkpoint {path} was written with other training options; use a fresh folder")
    weights_file = os.path.join(path, MODEL_DIR, "model.safetensors")
    loaded = load_file(weights_file)
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    if unexpected or any(m in params for m in missing):
        raise ValueError(f"checkpoint {path} does not match this model (missing {missing}, unexpected {unexpected})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    saved = load_optimizer_tensors(path)
    for name, p in params.items():
        for k in state[name]:
            state[name][k] = saved[name][k].to(device=p.device, dtype=p.dtype)
    return TrainResult(steps=info["step"], lr_history=list(info["lr_history"]),
                       loss_history=list(info["loss_history"]), resumed_from=info["step"])
