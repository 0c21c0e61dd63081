"""Other losses: label smoothing (chunked head and full logits) and the reward-weighted
policy-gradient loss, each against an independent float64 per-document autograd loop; bad rewards
are one line with nothing written."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config import BuildConfig, GradientOptions
from bergson_core.data.corpus import tokenize_rows
from bergson_core.data.rewards import advantages
from bergson_core.errors import UserError
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.index.build import prepare_build
from bergson_core.model.head_loss import has_plain_head, head_document_losses
from bergson_core.model.loading import clear_cache
from bergson_core.model.loss import document_losses
from bergson_core.model.tiny import save_tiny

from .helpers import TEXTS, corpus_from_rows, docs_from_texts, grad_options, reference_gradients, write_jsonl

EPS = 0.2


def smoothed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1 - eps) * NLL of the label + eps * mean NLL over the vocabulary, per token [T]."""
    logp = torch.log_softmax(logits, dim=-1)  # [T, V]
    nll = -logp.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return (1 - EPS) * nll - EPS * logp.mean(dim=-1)


class Smoothing(GradientOptions):  # plus the build's loss option
    label_smoothing: float = EPS


def test_label_smoothing_gradients_match_autograd(loaded_models, tokenizer):
    loaded = loaded_models("llama")
    assert has_plain_head(loaded.model)  # the chunked head path
    docs = docs_from_texts(tokenizer, TEXTS[:6])
    opts = Smoothing(projection_dim=0)
    modules = tracked_modules(loaded, opts)
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    want = reference_gradients(loaded, modules, docs, token_loss=smoothed)
    plain = reference_gradients(loaded, modules, docs)
    assert np.abs(want - plain).max() > 1e-3 * np.abs(want).max()  # smoothing changes the gradients
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def test_label_smoothing_full_logits_equals_chunked_head(loaded_models, tokenizer):
    """document_losses (full logits) and the chunked head agree in value and in gradient."""
    model = loaded_models("gpt_neox").model
    docs = docs_from_texts(tokenizer, TEXTS[:4])
    width = max(len(d.input_ids) for d in docs)
    ids = torch.tensor([d.input_ids + [0] * (width - len(d.input_ids)) for d in docs])
    mask = (torch.arange(width)[None] < torch.tensor([len(d.input_ids) for d in docs])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    emb = model.get_input_embeddings()
    outs = []
    for chunked in (False, True):
        grads = {}
        handle = emb.register_forward_hook(lambda m, i, o: grads.setdefault("e", o.requires_grad_(True)))
        try:
            if chunked:
                losses = head_document_losses(model, ids, mask, labels, "mean", EPS)
            else:
                losses = document_losses(model(input_ids=ids, attention_mask=mask).logits, labels, "mean",
                                         label_smoothing=EPS)
            (g,) = torch.autograd.grad(losses.sum(), grads["e"])
        finally:
            handle.remove()
        outs.append((losses.detach(), g))
    ref = torch.stack([smoothed(model(input_ids=ids[b : b + 1, : len(d.input_ids)]).logits[0, :-1],
                                torch.tensor(d.input_ids[1:])).mean() for b, d in enumerate(docs)]).detach()
    torch.testing.assert_close(outs[0][0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-10, atol=1e-12)


ROWS = {
    "prompt": ["the cat", "the cat", "the cat", "a dog", "a dog", "birds"],
    "completion": ["sat on the mat", "ran in the park", "sleeps", "ran after it", "sat", "sing"],
    "reward": [1.0, 0.0, 2.0, -1.0, 3.0, 5.0],
}


def test_advantages_are_reward_minus_prompt_mean():
    corpus = corpus_from_rows(ROWS)
    np.testing.assert_allclose(advantages(corpus, "reward", "prompt"), [0, -1, 1, -2, 2, 0])
    np.testing.assert_allclose(advantages(corpus, "reward", None), np.array(ROWS["reward"]) - 10 / 6)


def test_reward_weighted_gradients_match_autograd(loaded_models, tokenizer):
    loaded = loaded_models("gpt2")
    corpus = corpus_from_rows(ROWS)
    docs = tokenize_rows(corpus, 0, 6, tokenizer, 64, "text", "prompt", "completion", reward_column="reward")
    assert [d.weight for d in docs] == [0, -1, 1, -2, 2, 0]
    opts = grad_options()
    modules = tracked_modules(loaded, opts)
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    want = reference_gradients(loaded, modules, docs)  # scales each document's loss by its weight
    plain = reference_gradients(loaded, modules, tokenize_rows(corpus, 0, 6, tokenizer, 64, "text", "prompt",
                                                              "completion"))
    np.testing.assert_allclose(want, plain * np.array([0, -1, 1, -2, 2, 0])[:, None], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("case", ["nan", "missing", "text", "no column"])
def test_bad_rewards_are_one_line_errors(tmp_path, case):
    model = save_tiny(str(tmp_path / "m"), "llama", TEXTS, hidden=16, layers=1)
    rows = [{"text": t, "reward": 1.0} for t in TEXTS[:4]]
    if case == "nan":
        rows[2]["reward"] = float("nan")
    elif case == "missing":
        rows[1]["reward"] = None
    elif case == "text":
        rows = [{**r, "reward": "good"} for r in rows]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = BuildConfig(model=model, dataset=data, index=str(tmp_path / "index"), device="cpu",
                      reward_column="score" if case == "no column" else "reward")
    clear_cache()
    with pytest.raises(UserError) as e:
        prepare_build(cfg)
    clear_cache()
    assert "\n" not in str(e.value) and ("row" in str(e.value) or case in ("text", "no column")), str(e.value)
    assert not os.path.exists(cfg.index)
    assert cfg.spec()["reward_column"] and "label_smoothing" not in cfg.spec()


PAIRS = {
    "prompt": ["the cat", "a dog", "birds", "the train"],
    "chosen": ["sat on the mat", "ran in the park", "sing", "leaves at noon"],
    "rejected": ["ran", "sleeps by the fire", "sing at night in spring", "is slow"],
}


def pair_loss(model, doc) -> torch.Tensor:
    """ORPO's odds-ratio loss of one pair, unbatched, from per-sequence mean log-probabilities."""
    def mean_logp(d):
        logits = model(input_ids=torch.tensor([d.input_ids])).logits[0, :-1]
        labels = torch.tensor(d.labels[1:])
        keep = labels != -100
        return torch.log_softmax(logits, -1)[keep].gather(1, labels[keep][:, None]).mean()

    lc, lr = mean_logp(doc), mean_logp(doc.rejected)
    odds = (lc - torch.log1p(-torch.exp(lc))) - (lr - torch.log1p(-torch.exp(lr)))
    return -torch.log(torch.sigmoid(odds))


def test_preference_pair_gradients_match_autograd(loaded_models, tokenizer):
    loaded = loaded_models("llama")
    docs = tokenize_rows(corpus_from_rows(PAIRS), 0, 4, tokenizer, 64, "text", "prompt", "chosen",
                         rejected_column="rejected")
    assert all(d.rejected is not None and d.rejected.input_ids[:2] == d.input_ids[:2] for d in docs)
    opts = grad_options(include_bias=True)
    modules = tracked_modules(loaded, opts)
    got, _ = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    subs = [loaded.model.get_submodule(m.name) for m in modules]
    params = [p for s in subs for p in (s.weight, s.bias)]
    want = np.zeros_like(got)
    for p in params:
        p.requires_grad_(True)
    try:
        for r, doc in enumerate(docs):
            grads = iter(torch.autograd.grad(pair_loss(loaded.model, doc), params))
            want[r] = torch.cat([torch.cat([w, next(grads)[:, None]], 1).reshape(-1) for w in grads]).numpy()
    finally:
        for p in params:
            p.requires_grad_(False)
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("case", ["missing column", "no completion column"])
def test_bad_preference_options_are_one_line_errors(tmp_path, case):
    model = save_tiny(str(tmp_path / "m"), "llama", TEXTS, hidden=16, layers=1)
    data = write_jsonl(tmp_path / "c.jsonl", [{"prompt": p, "chosen": c} for p, c in zip(PAIRS["prompt"], PAIRS["chosen"])])
    cols = {"prompt_column": "prompt", "completion_column": "chosen"} if case == "missing column" else {}
    cfg = BuildConfig(model=model, dataset=data, index=str(tmp_path / "index"), device="cpu",
                      rejected_column="rejected", **cols)
    clear_cache()
    with pytest.raises(UserError) as e:
        prepare_build(cfg)
    clear_cache()
    assert "\n" not in str(e.value) and "rejected" in str(e.value), str(e.value)
    assert not os.path.exists(cfg.index)
