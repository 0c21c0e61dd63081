"""Fixtures of the training-dynamics tests: one torch thread (tiny models on a shared 2-core box),
a tiny trained run with checkpoints, written once per session."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import one_torch_thread

one_thread = pytest.fixture(autouse=True, scope="package", name="one_thread")(one_torch_thread)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny float64 GPT-2 trained with AdamW for 4 steps (checkpoints at 2 and 4, linear decay),
    its corpus and queries as JSONL files."""
    from bergson_core.config.eval import TrainOptions
    from bergson_core.train.trainer import train
    from tests.core.helpers import write_jsonl
    from tests.eval import helpers

    root = tmp_path_factory.mktemp("dynamics")
    tok = helpers.tokenizer()
    texts = helpers.TEXTS[:8]
    queries = ["the cat sat in the park", "birds sing on the mat"]
    model = helpers.model(tok, dtype=torch.float64)
    opts = TrainOptions(optimizer="adamw", lr=0.01, epochs=2, batch_size=4, checkpoint_every=2,
                        schedule="linear", warmup_steps=1, train_loss="sum")
    train(model, helpers.docs(tok, texts), opts, pad_id=0, checkpoint_dir=str(root / "run"), tokenizer=tok)
    return {
        "root": root,
        "run": root / "run",
        "opts": opts,
        "corpus": write_jsonl(root / "corpus.jsonl", [{"text": t} for t in texts]),
        "queries": write_jsonl(root / "queries.jsonl", [{"text": t} for t in queries]),
        "texts": texts,
        "query_texts": queries,
    }
