"""MAGIC metagradients: finite differences of the retrained query loss, and schedule invariance."""

from __future__ import annotations

import pytest
import torch

from bergson_core.config.eval import TrainOptions
from bergson_core.methods.magic.metagrad import metagradients, retrained_query_losses
from tests.eval import helpers

TEXTS = helpers.TEXTS[:6]
QUERIES = ["the cat sat in the park", "a dog sails across the sea"]

OPTIONS = {
    "sgd": TrainOptions(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, epochs=2, batch_size=2,
                        train_loss="mean", schedule="linear", warmup_steps=1),
    "adamw": TrainOptions(optimizer="adamw", lr=0.01, weight_decay=0.1, eps=1e-6, epochs=2, batch_size=2,
                          train_loss="mean", schedule="linear", warmup_steps=1),
}


@pytest.fixture(scope="module")
def setup():
    tok = helpers.tokenizer(QUERIES)
    return {"tok": tok, "model": helpers.model(tok, dtype=torch.float64), "docs": helpers.docs(tok, TEXTS),
            "queries": helpers.docs(tok, QUERIES)}


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_metagradient_matches_finite_differences_of_retraining(setup, kind):
    opts = OPTIONS[kind]
    model, docs, queries = setup["model"], setup["docs"], setup["queries"]
    grads, stats = metagradients(model, docs, queries, opts, schedule="every")
    assert grads.shape == (len(QUERIES), len(TEXTS)) and stats.steps == 6
    h = 1e-6  # central differences: truncation error ~h^2 (AdamW is curved), roundoff ~1e-9
    fd = torch.zeros_like(grads)
    for d in range(len(docs)):
        up, down = torch.ones(len(docs), dtype=torch.float64), torch.ones(len(docs), dtype=torch.float64)
        up[d] += h
        down[d] -= h
        fd[:, d] = (retrained_query_losses(model, docs, queries, opts, up)
                    - retrained_query_losses(model, docs, queries, opts, down)) / (2 * h)
    assert fd.abs().max() > 1e-3  # the weights matter: not a vacuous match
    torch.testing.assert_close(grads, fd, rtol=1e-5, atol=1e-6 * fd.abs().max().item())


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_checkpointing_schedules_give_identical_metagradients(setup, kind):
    opts = OPTIONS[kind].model_copy(update={"epochs": 6})  # 18 steps: sqrt segments of 5 (a short last one)
    model, docs, queries = setup["model"], setup["docs"], setup["queries"]
    every, s_every = metagradients(model, docs, queries, opts, schedule="every", per_query=False)
    sqrt, s_sqrt = metagradients(model, docs, queries, opts, schedule="sqrt", per_query=False)
    log, s_log = metagradients(model, docs, queries, opts, schedule="log", per_query=False)
    assert torch.equal(every, sqrt) and torch.equal(every, log)
    # the trade: fewer states held, more steps recomputed
    assert s_every.peak_states > s_sqrt.peak_states > s_log.peak_states
    assert s_every.forward_steps < s_sqrt.forward_steps < s_log.forward_steps
    assert s_every.backward_steps == s_sqrt.backward_steps == s_log.backward_steps == 18


def test_aggregate_is_the_sum_of_per_query_metagradients(setup):
    opts = OPTIONS["adamw"]
    per, _ = metagradients(setup["model"], setup["docs"], setup["queries"], opts)
    total, _ = metagradients(setup["model"], setup["docs"], setup["queries"], opts, per_query=False)
    torch.testing.assert_close(per.sum(0, keepdim=True), total, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_unrolled_training_is_the_project_trainer(setup, kind):
    """The differentiable re-implementation reaches the same weights as bergson_core.train.trainer."""
    import copy

    from bergson_core.methods.magic.metagrad import Unrolled
    from bergson_core.train.trainer import train

    opts = OPTIONS[kind]
    w = torch.linspace(0.5, 1.5, len(TEXTS), dtype=torch.float64)
    un = Unrolled(setup["model"], setup["docs"], opts)
    final = un.run(un.initial(), w, un.total)
    ref = copy.deepcopy(setup["model"]).requires_grad_(True)
    train(ref, setup["docs"], opts, weights=w)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(final.params[name], p.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_batched_queries_equal_one_backward_pass_per_query(setup, kind):
    opts = OPTIONS[kind]
    one, s_one = metagradients(setup["model"], setup["docs"], setup["queries"], opts, schedule="sqrt")
    batch, s_batch = metagradients(setup["model"], setup["docs"], setup["queries"], opts, schedule="sqrt",
                                   query_batch=2)
    torch.testing.assert_close(batch, one, rtol=1e-10, atol=1e-13)
    assert s_batch.backward_steps * 2 == s_one.backward_steps  # one differentiated step serves both queries
