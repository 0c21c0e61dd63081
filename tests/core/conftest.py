"""Shared fixtures for the core correctness tests (helpers live in tests/core/helpers.py)."""

from __future__ import annotations

import pytest

from bergson_core.model.loading import LoadedModel
from bergson_core.model.tiny import train_tokenizer

from .helpers import QUERIES, TEXTS, make_loaded


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def queries() -> list[str]:
    return list(QUERIES)


@pytest.fixture(scope="session")
def tokenizer():
    """A word-level tokenizer over the test corpus and queries ([PAD]=0, [BOS] prepended)."""
    return train_tokenizer(TEXTS + QUERIES)


@pytest.fixture(scope="session")
def loaded_models(tokenizer):
    """float64 tiny GPT-2 (Conv1D), Llama and GPT-NeoX, each built once per session."""
    cache: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in cache:
            cache[arch] = make_loaded(arch, tokenizer)
        return cache[arch]

    return get
