"""Token-budget batching of length-sorted documents, and right-padded collation."""

from __future__ import annotations

import torch

from .corpus import Doc


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group positions into batches whose padded size (count x longest) fits the token budget.

    Documents are taken longest first so each batch pads little; a document longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def collate(docs: list[Doc], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest document: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(d.input_ids) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    labels = torch.full((len(docs), width), -100, dtype=torch.long)
    for row, d in enumerate(docs):
        n = len(d.input_ids)
        ids[row, :n] = torch.tensor(d.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(d.labels)
    return ids.to(device), mask.to(device), labels.to(device)
