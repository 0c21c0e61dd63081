"""The one per-document loss: next-token cross-entropy of each document, from the model's logits.

Every method measures a document's loss with this function: gradient capture (gradients/capture.py),
curvature passes (curvature/hooks.py), the trainer (train/trainer.py) and MAGIC's functional forward
(methods/magic/metagrad.py), so "the loss of document d" means the same number everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 logits as float32 (others unchanged): what gradient capture and curvature
    passes score, so a half-precision model's losses are summed in float32."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def document_losses(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum",
                    token_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy per document [B] from logits [B, T, V], in the logits' dtype;
    labels == -100 carry no loss. `token_weights` [B, T] weighs the loss of predicting each
    position's token (position 0 unused); "mean" divides by the number of counted tokens, so
    weights of 1 change nothing. `label_smoothing` is F.cross_entropy's."""
    target = labels[:, 1:]  # [B, T-1]
    tok = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="none",
                          label_smoothing=label_smoothing)  # [B, T-1]
    if token_weights is not None:
        tok = tok * token_weights[:, 1:]
    loss = tok.sum(dim=1)
    if reduction == "mean":
        loss = loss / (target != -100).sum(dim=1).clamp(min=1)
    return loss


def log_odds_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Preference loss per pair [B] from the mean next-token cross-entropies of the chosen and the
    rejected completion [B]: -log sigmoid(log odds(chosen) - log odds(rejected)), with
    log odds(y) = log p - log(1 - p) and log p = -mean cross-entropy (ORPO's odds-ratio term, Hong et
    al. 2024)."""
    def log_odds(ce: torch.Tensor) -> torch.Tensor:
        return -ce - torch.log(-torch.expm1(-ce))

    return -F.logsigmoid(log_odds(chosen) - log_odds(rejected))


def kl_document_losses(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor,
                       reduction: str = "sum") -> torch.Tensor:
    """KL(p || p_base) of the next-token distributions per document [B], summed (or averaged) over
    the positions whose next token carries a label; logits [B, T, V], base_logits without gradient."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]
    base = torch.log_softmax(base_logits[:, :-1].to(logp.dtype), dim=-1)
    kl = (logp.exp() * (logp - base)).sum(-1)  # [B, T-1]
    counted = labels[:, 1:] != -100
    loss = (kl * counted).sum(dim=1)
    if reduction == "mean":
        loss = loss / counted.sum(dim=1).clamp(min=1)
    return loss
