"""Fixtures for flow and CLI tests: a tiny saved model and corpus, and a runner for the real
`bergson` console script (the session's Prefect API, `prefect_api`, is in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bergson_core.model.tiny import save_tiny

WORDS = ["apple", "river", "stone", "cloud", "music", "garden", "engine", "forest", "silver", "window",
         "planet", "bread", "winter", "candle", "harbor", "violin"]


def corpus_texts(n: int = 24) -> list[str]:
    """Deterministic short documents; every few share words so rankings are not flat."""
    out = []
    for i in range(n):
        a, b, c = WORDS[i % 16], WORDS[(i * 3 + 1) % 16], WORDS[(i * 5 + 2) % 16]
        out.append(f"the {a} and the {b} near a {c}" + " again" * (i % 4))
    return out


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("flows")
    texts = corpus_texts()
    corpus = write_jsonl(root / "corpus.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    queries = write_jsonl(root / "queries.jsonl", [{"text": texts[3]}, {"text": "the violin and the candle"}])
    model = save_tiny(str(root / "model"), "gpt2", texts + ["the violin and the candle"], hidden=32, layers=2)
    return {"root": root, "corpus": corpus, "queries": queries, "model": model}


@pytest.fixture
def run_cli(prefect_api):
    """Run the real console script in a subprocess against the session's Prefect API."""

    def run(*args, timeout=300, env_extra=None):
        env = dict(os.environ, PREFECT_API_URL=prefect_api, HF_HUB_OFFLINE="1",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", **(env_extra or {}))
        exe = os.path.join(os.path.dirname(sys.executable), "bergson")
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)

    return run
