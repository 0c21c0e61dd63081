"""SOURCE: training-data attribution by approximate unrolling (Bae, Lin, Lorraine & Grosse 2024,
"Training Data Attribution via Approximate Unrolling").

Training is cut into segments l = 1..L of consecutive checkpoints. Within a segment the curvature is
taken as constant, H_l (EK-FAC: KFAC factors averaged over the segment's checkpoints, eigenvalues
corrected on their per-document gradients), and eta_l is the segment's total learning rate (the sum
of its steps' rates from the trainer's history). Unrolling K SGD steps of step size eta/K around a
constant H gives, in H_l's eigenbasis,

    propagation   S_l = exp(-eta_l H_l)                  (how a change at the segment's start survives it)
    response      R_l = (I - exp(-eta_l H_l)) H_l^-1     (the summed effect of a gradient nudge inside it;
                                                          -> eta_l I for flat directions, H^-1 for steep ones)

and upweighting document d by epsilon moves the final weights by
-epsilon/N sum_l S_L ... S_{l+1} R_l g_{d,l}, with g_{d,l} the document's gradient averaged over the
segment's checkpoints (a document is seen 1/N of the time on average). The score is minus the change
of the query loss, so the query gradient at the final weights is carried backwards once:

    v_L = g_q,   u_l = R_l v_l / N,   v_{l-1} = S_l v_l,   score(q, d) = sum_l u_l . g_{d,l}

Adam variant: Adam's step is -eta P g with P = diag(1 / (sqrt(v_hat) + eps)) from the optimizer state.
With P_l constant in a segment, (I - eta P H) = P^1/2 (I - eta H~) P^-1/2 for H~ = P^1/2 H P^1/2, so the
same formulas hold for gradients rescaled by P_l^1/2: EK-FAC's eigenvalues are corrected on P_l^1/2 g
(the KFAC eigenbasis stays that of the raw factors), and

    u_l = P^1/2 R~_l P^1/2 v_l / N,   v_{l-1} = P^-1/2 S~_l P^1/2 v_l.

Optional damping replaces H_l by H_l + d I in both formulas (d absolute, or relative to each
module's mean eigenvalue as for EK-FAC). Weight decay and momentum's transient are left out (as in the paper); SGD momentum m folds in as
eta / (1 - m). With one segment and eta -> infinity, SOURCE is the EK-FAC influence function
(without damping) divided by N; with eta -> 0 it is TracIn with interval learning rates divided by N.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np
import torch

from ... import curvature as C
from ...curvature.space import block_view
from ...curvature.strategies.kfac import eigen_precondition
from ...errors import ConfigError, StoreError

SUMMARY_FILE = "source.json"
SEGMENTS_DIR = "segments"


# -- checkpoints and segments ----------------------------------------------------------------------
@dataclass
class Checkpoint:
    folder: str  # the trainer checkpoint (trainer_state.json)
    model: str  # its Hugging Face model folder
    step: int
    state: dict  # trainer_state.json

    @property
    def optimizer_file(self) -> str:
        from ...train.trainer import OPTIMIZER_FILE

        return os.path.join(self.folder, OPTIMIZER_FILE)


def read_checkpoints(paths: list[str]) -> list[Checkpoint]:
    """The checkpoints sorted by training step (a shell glob lists checkpoint-140 before
    checkpoint-70), each with its trainer state; refuses anything else."""
    from ...train.trainer import MODEL_DIR, read_trainer_state
    from ..tracin.run import checkpoint_folder

    if not paths:
        raise ConfigError("give the training checkpoints: --checkpoints CHECKPOINT [CHECKPOINT ...]")
    out = []
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError(f"checkpoint {path} does not exist: pass trainer checkpoint folders (checkpoint-N)")
        folder = checkpoint_folder(path)
        if folder is None:
            raise ConfigError(f"{path} has no trainer_state.json: pass the trainer's checkpoint folders")
        state = read_trainer_state(folder)
        if "lr_history" not in state:
            raise ConfigError(f"{folder}/trainer_state.json has no lr_history: pass --segment-learning-rates")
        model = os.path.join(folder, MODEL_DIR)
        out.append(Checkpoint(folder, model if os.path.isdir(model) else folder, int(state["step"]), state))
    out.sort(key=lambda c: c.step)
    for a, b in itertools.pairwise(out):
        if a.step == b.step:
            raise ConfigError(f"checkpoints {a.folder} and {b.folder} are both at step {a.step}: pass each once")
    return out


def segment_groups(num_checkpoints: int, segments: int | None) -> list[list[int]]:
    """Consecutive checkpoint positions per segment, as even as possible (earlier segments get the extra)."""
    segments = num_checkpoints if segments is None else segments
    if segments > num_checkpoints:
        raise ConfigError(f"{segments} segments need at least as many checkpoints, got {num_checkpoints}: "
                          "lower --segments")
    return [list(map(int, g)) for g in np.array_split(np.arange(num_checkpoints), segments)]


def variant(cfg, checkpoints: list[Checkpoint]) -> str:
    """sgd or adam: the asked variant, or the trainer's optimizer for auto."""
    kinds = {c.state.get("optimizer", "adamw") for c in checkpoints}
    if cfg.optimizer != "auto":
        want = cfg.optimizer
    else:
        want = "adam" if kinds & {"adamw", "adam"} else "sgd"
    if want == "adam":
        missing = [c.folder for c in checkpoints if not os.path.exists(c.optimizer_file)]
        if missing:
            raise ConfigError(f"checkpoint {missing[0]} has no optimizer.safetensors: the Adam variant needs the "
                              "optimizer states (or pass --optimizer sgd)")
        if cfg.projection_dim:
            raise ConfigError("the Adam variant rescales full gradients elementwise: use --projection-dim 0 "
                              "(or --optimizer sgd)")
    return want


def segment_learning_rates(cfg, checkpoints: list[Checkpoint], groups: list[list[int]], kind: str) -> list[float]:
    """eta_l: the sum of the learning rates of the steps since the previous segment's last checkpoint."""
    if cfg.segment_learning_rates is not None:
        if len(cfg.segment_learning_rates) != len(groups):
            raise ConfigError(f"{len(cfg.segment_learning_rates)} segment learning rates for {len(groups)} segments")
        return [float(x) for x in cfg.segment_learning_rates]
    history = checkpoints[-1].state["lr_history"]
    hyper = checkpoints[-1].state.get("hyperparameters", {})
    scale = 1.0 / (1.0 - hyper.get("momentum", 0.0)) if kind == "sgd" else 1.0
    out, prev = [], 0
    for g in groups:
        end = checkpoints[g[-1]].step
        out.append(scale * float(sum(history[prev:end])))
        prev = end
    return out


def adam_sqrt_scale(checkpoint: Checkpoint, modules) -> torch.Tensor:
    """P^1/2 [D] in the full-gradient row layout: 1 / sqrt(sqrt(v_hat) + eps) from the checkpoint's
    optimizer state, bias-corrected with its step and the trainer's beta2."""
    from safetensors.torch import load_file

    from ...gradients.normalizers import adam_normalizers

    hyper = checkpoint.state.get("hyperparameters", {})
    state: dict[str, dict] = {}
    for key, t in load_file(checkpoint.optimizer_file).items():
        name, kind = key.rsplit(".", 1)
        state.setdefault(name, {})[kind] = t
    for entry in state.values():
        entry.update(step=checkpoint.step, hp_betas=(hyper.get("beta1", 0.9), hyper.get("beta2", 0.999)))
    norms = adam_normalizers(state, modules, eps=hyper.get("eps", 1e-8))
    return torch.cat([norms[m.name].scale.reshape(-1) for m in modules]).sqrt()  # [D]


# -- the segment algebra ---------------------------------------------------------------------------
def damped(lam: torch.Tensor, damping: float, mode: str) -> torch.Tensor:
    """Lambda + d, with d absolute or d = damping x the module's mean eigenvalue (as EK-FAC's options)."""
    return lam + (damping if mode == "absolute" else damping * float(lam.mean()))


def _spectral(fit: C.Fit, rows: torch.Tensor, fn, damping: float = 0.0, mode: str = "relative") -> torch.Tensor:
    """Q f(Lambda + d) Q^T applied to rows [Q, D] block by block (float64)."""
    out = torch.empty_like(rows)
    for b in fit.blocks:
        scale = fn(damped(fit.tensor(b.name, "Lambda").to(torch.float64), damping, mode))  # [O', I']
        res = eigen_precondition(block_view(rows, b), fit.tensor(b.name, "Q_S"), fit.tensor(b.name, "Q_A"), scale)
        out[:, b.offset:b.offset + b.width] = res.reshape(rows.shape[0], -1)
    return out


def response_scale(lam: torch.Tensor, eta: float) -> torch.Tensor:
    """(1 - exp(-eta lambda)) / lambda, = eta at lambda = 0 (no damping needed)."""
    pos = lam > 0
    safe = torch.where(pos, lam, torch.ones_like(lam))
    return torch.where(pos, -torch.expm1(-eta * safe) / safe, torch.full_like(lam, eta))


def propagation_scale(lam: torch.Tensor, eta: float) -> torch.Tensor:
    return torch.exp(-eta * lam.clamp(min=0))


@dataclass
class Segment:
    fit: C.Fit  # EK-FAC (Q_S, Q_A, Lambda per module) of the segment, in the rescaled space for Adam
    eta: float  # total learning rate of the segment
    sqrt_scale: torch.Tensor | None = None  # P_l^1/2 [D] (Adam variant)
    damping: float = 0.0  # H_l + d I: bounds the response of flat directions like EK-FAC's damping
    damping_mode: str = "relative"


def query_directions(query: torch.Tensor, segments: list[Segment], num_docs: int) -> list[torch.Tensor]:
    """u_l [Q, D] for every segment from the query gradients at the final weights [Q, D]: the
    documents' score is sum_l u_l . g_{d,l}."""
    v = query.to(torch.float64)
    out: list[torch.Tensor] = [None] * len(segments)  # type: ignore[list-item]
    for i in reversed(range(len(segments))):
        seg = segments[i]
        vt = v if seg.sqrt_scale is None else v * seg.sqrt_scale
        r = _spectral(seg.fit, vt, lambda lam, eta=seg.eta: response_scale(lam, eta), seg.damping, seg.damping_mode)
        out[i] = (r if seg.sqrt_scale is None else r * seg.sqrt_scale) / num_docs
        if i:
            s = _spectral(seg.fit, vt, lambda lam, eta=seg.eta: propagation_scale(lam, eta), seg.damping, seg.damping_mode)
            v = s if seg.sqrt_scale is None else s / seg.sqrt_scale
    return out


def fit_segment(kfac_totals: list[C.Stats], row_sources: list, sqrt_scale: torch.Tensor | None) -> C.Fit:
    """EK-FAC of one segment: KFAC factors summed over its checkpoints (an average once divided by the
    token count), eigenvalues corrected on every checkpoint's per-document gradient rows (rescaled by
    P^1/2 for Adam). `row_sources` yields float64-able row blocks [n, D]."""
    import dataclasses

    from ...curvature.run import _live_rows

    total = C.reduce_stats([dataclasses.replace(s, kind="kfac") for s in kfac_totals])
    basis = C.fit_preconditioner("kfac", {"kfac": total})
    lam = None
    for rows in row_sources:
        x = torch.from_numpy(_live_rows(rows))
        if sqrt_scale is not None:
            x = x * sqrt_scale
        part = C.rows_lambda_partial_stats(x, basis)
        lam = part if lam is None else C.reduce_stats([lam, part])
    if lam is None:
        raise StoreError("the segment's indexes hold no gradient rows: rebuild them")
    fit = C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=basis)
    fit.meta["kfac_tokens"] = total.counts.get("tokens")
    return fit
