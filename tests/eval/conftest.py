"""Fixtures of the evaluation tests.

Tiny models train fastest on one CPU thread (two threads spin against each other, worse on a shared
box), so every test here runs with torch.set_num_threads(1) and the old value comes back after.
The Prefect test harness (a temporary API and database) is started once per session and only by
the flow tests that ask for it.
"""

from __future__ import annotations

import pytest

from tests.conftest import one_torch_thread

one_thread = pytest.fixture(autouse=True, scope="package", name="one_thread")(one_torch_thread)


@pytest.fixture(scope="session")
def prefect_harness(prefect_api):
    """The session's one Prefect API (tests/conftest.py)."""
    yield prefect_api


@pytest.fixture(scope="session")
def facts_setup(tmp_path_factory):
    """A small facts corpus (24 documents, 8 queries) and a tiny GPT-2 init folder, written once."""
    from bergson_core.eval.facts import make_facts
    from bergson_core.model.tiny import save_tiny
    from tests.core.helpers import write_jsonl

    root = tmp_path_factory.mktemp("facts")
    docs, queries = make_facts(num_people=4, attributes=("city", "job"), seed=0)
    texts = [d["text"] for d in docs] + [q["prompt"] + " " + q["completion"] for q in queries]
    return {
        "root": root,
        "corpus": write_jsonl(root / "corpus.jsonl", docs),
        "queries": write_jsonl(root / "queries.jsonl", queries),
        "model": save_tiny(str(root / "init"), "gpt2", texts, seed=0, hidden=16, layers=1, heads=2),
        "docs": docs,
        "query_rows": queries,
    }


@pytest.fixture
def bank_options(facts_setup, tmp_path):
    """A recipe over the facts corpus with a fresh bank folder per test."""
    from bergson_core.config.eval import ValidateConfig

    def make(**kw):
        values = dict(bank=str(tmp_path / "bank"), model=facts_setup["model"], dataset=facts_setup["corpus"],
                      id_column="id", queries=facts_setup["queries"], query_prompt_column="prompt",
                      query_completion_column="completion", max_length=32, lr=3e-3, epochs=2, batch_size=4,
                      num_subsets=4)
        values.update(kw)
        return ValidateConfig(**values)

    return make
