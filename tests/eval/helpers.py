"""Tiny setups for the evaluation tests: a word tokenizer, tiny models, token documents."""

from __future__ import annotations

import torch

from bergson_core.data.corpus import Doc
from bergson_core.model.tiny import tiny_model, train_tokenizer

TEXTS = [
    "the cat sat on the mat", "a dog ran in the park", "birds sing at dawn", "the fox jumps over the dog",
    "rain falls on green hills", "we read old books", "a boat sails across the sea", "the sun rises early",
    "children play in the snow", "trees grow near the river", "music fills the room", "the train leaves at noon",
]


def tokenizer(extra: list[str] = ()):
    return train_tokenizer(TEXTS + list(extra))


def docs(tok, texts: list[str] = TEXTS) -> list[Doc]:
    out = []
    for i, t in enumerate(texts):
        ids = tok([t])["input_ids"][0]
        out.append(Doc(i, str(i), list(ids), list(ids)))
    return out


def model(tok, dtype=torch.float64, seed: int = 0, arch: str = "gpt2"):
    m = tiny_model(arch, len(tok), seed=seed, dtype=dtype, hidden=16, layers=1)
    return m.requires_grad_(True)


def weights_of(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}
