"""MAGIC with a training weight per token: all-one token weights are the document-weighted training,
token metagradients sum to the document ones, and match finite differences of retraining with the
project's trainer; `bergson magic --weights token` writes them as token_scores.parquet."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bergson_core.methods.magic import tokens as magic_tokens
from bergson_core.methods.magic.metagrad import Unrolled, metagradients, retrained_query_losses
from bergson_core.train.trainer import train

from .test_magic import OPTIONS as DOCUMENT_OPTIONS
from .test_magic import QUERIES, TEXTS, setup  # noqa: F401  (the shared tiny float64 setup fixture)

# the same recipes as the document-weight tests; AdamW with summed token losses, so both reductions are covered
OPTIONS = {"sgd": DOCUMENT_OPTIONS["sgd"], "adamw": DOCUMENT_OPTIONS["adamw"].model_copy(update={"train_loss": "sum"})}


def random_token_weights(docs, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand(magic_tokens.ones(docs).shape, generator=gen, dtype=torch.float64)


def test_all_one_token_weights_are_the_document_training(setup):  # noqa: F811
    docs = setup["docs"]
    plain = copy.deepcopy(setup["model"]).requires_grad_(True)
    train(plain, docs, OPTIONS["adamw"])
    tokens = copy.deepcopy(setup["model"]).requires_grad_(True)
    train(tokens, docs, OPTIONS["adamw"], weights=magic_tokens.ones(docs))
    for (name, a), b in zip(plain.named_parameters(), tokens.parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="per document and token"):
        train(tokens, docs, OPTIONS["adamw"], weights=torch.ones(len(docs), 2, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_token_metagradients_sum_to_the_document_metagradient(setup, kind):  # noqa: F811
    opts, docs = OPTIONS[kind], setup["docs"]
    per_doc, _ = metagradients(setup["model"], docs, setup["queries"], opts, schedule="sqrt")
    per_token, _ = metagradients(setup["model"], docs, setup["queries"], opts, schedule="sqrt",
                                 weights=magic_tokens.ones(docs))
    assert per_token.shape == (len(QUERIES), len(docs), max(len(d.input_ids) for d in docs))
    torch.testing.assert_close(per_token.sum(2), per_doc, rtol=1e-10, atol=1e-13)
    # a weight that multiplies no loss (position 0, padding) has no effect
    acting = torch.from_numpy(magic_tokens.counted(docs, per_token.shape[2]))
    assert torch.all(per_token[:, ~acting] == 0) and per_token[:, acting].abs().min() > 0


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_unrolled_token_weighted_training_is_the_project_trainer(setup, kind):  # noqa: F811
    w = random_token_weights(setup["docs"])
    un = Unrolled(setup["model"], setup["docs"], OPTIONS[kind])
    final = un.run(un.initial(), w, un.total)
    ref = copy.deepcopy(setup["model"]).requires_grad_(True)
    train(ref, setup["docs"], OPTIONS[kind], weights=w)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(final.params[name], p.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_token_metagradient_matches_finite_differences_of_retraining(setup, kind):  # noqa: F811
    opts, model, docs, queries = OPTIONS[kind], setup["model"], setup["docs"], setup["queries"]
    w = random_token_weights(docs)
    grads, _ = metagradients(model, docs, queries, opts, weights=w, schedule="every")
    h = 1e-6  # central differences, as for the document weights
    for d, t in [(0, 1), (2, 3), (5, len(docs[5].input_ids) - 1)]:
        up, down = w.clone(), w.clone()
        up[d, t] += h
        down[d, t] -= h
        fd = (retrained_query_losses(model, docs, queries, opts, up)
              - retrained_query_losses(model, docs, queries, opts, down)) / (2 * h)
        assert fd.abs().max() > 1e-4  # the token's weight matters
        torch.testing.assert_close(grads[:, d, t], fd, rtol=1e-5, atol=1e-6 * fd.abs().max().item())


def test_command_writes_token_scores_that_sum_to_the_document_scores(tmp_path, facts):
    import pyarrow.parquet as pq

    from bergson_core.eval.scores import dense_scores
    from bergson_core.methods.magic.run import load_recipe, run_magic

    cfg = config(facts, output=str(tmp_path / "tokens"), weights="token", queries_per_task=5)
    summary = run_magic(cfg)
    per_doc = run_magic(config(facts, output=str(tmp_path / "docs")))
    n, nq = facts["documents"], facts["nq"]
    np.testing.assert_allclose(dense_scores(summary["output"], nq, n), dense_scores(per_doc["output"], nq, n),
                               rtol=1e-4, atol=1e-6)
    table = pq.read_table(summary["token_output"]).to_pandas()
    _, docs, _, _ = load_recipe(cfg)
    # one row per query and counted token, the token the row names, scores summing to the document's
    want = {(d, t) for d, doc in enumerate(docs) for t in range(1, len(doc.labels)) if doc.labels[t] != -100}
    assert len(table) == nq * len(want)
    assert set(zip(table.doc_index, table.position)) == want
    assert all(docs[d].input_ids[p] == tid for d, p, tid in zip(table.doc_index, table.position, table.token_id))
    assert (table.doc_id == [docs[d].doc_id for d in table.doc_index]).all()
    summed = table.groupby(["query_index", "doc_index"]).score.sum().unstack().to_numpy()
    np.testing.assert_allclose(summed, dense_scores(summary["output"], nq, n), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    from tests.dynamics.test_magic_flow import facts as make

    return make.__wrapped__(tmp_path_factory)


def config(facts, output: str, **recipe):
    from tests.dynamics.test_magic_flow import config as make

    return make(facts, output=output, checkpointing="sqrt").model_copy(update=recipe)
