"""The true Fisher's sampled labels against the exact expectation over the model's own predictive
distribution, on a 5-token vocabulary.

With teacher forcing the logits do not depend on the labels, and the summed loss's gradient with
respect to the logits at position s is e_s = p_s - onehot(y_s). Every label-dependent statistic
(KFAC's S = sum_t g_t g_t^T, the diagonal's sum of squared document gradients) is a quadratic form in
the e_s; under y_s ~ p_s independently E[e_s] = 0, so the cross terms vanish and
  E[stat] = sum_s sum_v p_s[v] * stat(the document with only position s labelled, as v),
each term an ordinary empirical-Fisher statistic (verified elsewhere against kronfluence). The
sampler's average over many copies of a document (each copy draws its own labels) must agree with it
within Monte-Carlo error (the correct sampler: at most 2.2 error bars on any statistic; uniform labels:
14.6 or more on every one; the next position's distribution: 24 or more; logits at half temperature:
5.4 or more)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from bergson_core import curvature as C
from bergson_core.config import GradientOptions
from bergson_core.data.corpus import Doc
from bergson_core.model.loading import LoadedModel
from bergson_core.model.modules import find_modules
from bergson_core.model.tiny import tiny_model
from tests.conftest import one_torch_thread

VOCAB = 5
DOCS = ([2, 3, 4, 1], [2, 4, 0])  # input ids; every position after the first carries loss
COPIES, GROUPS = 512, 8  # Monte-Carlo copies of each document, in groups that give the error bar
one_thread = pytest.fixture(autouse=True, scope="module", name="one_thread")(one_torch_thread)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", VOCAB, seed=0, dtype=torch.float64, hidden=8, layers=1)
    with torch.no_grad():  # a peaked predictive distribution, far from uniform
        model.lm_head.weight.mul_(40.0)
    model.requires_grad_(False)
    loaded = LoadedModel(model, None, torch.device("cpu"), torch.float64, threading.Lock())
    modules = find_modules(model, [], [], True, 0)
    return loaded, modules, C.Space.of(GradientOptions(projection_dim=0, include_bias=True))


def stats(setup, docs, **kw) -> dict[str, np.ndarray]:
    """KFAC's S factor and the diagonal statistics of every module: the label-dependent sums."""
    loaded, modules, space = setup
    kfac = C.kfac_partial_stats(loaded, modules, docs, space, **kw)
    diag = C.diagonal_partial_stats(loaded, modules, docs, space, **kw)
    out = {f"S {m.name}": kfac.tensor(m.name, "S").numpy() for m in modules}
    out.update({f"diagonal {k}": v.numpy() for k, v in diag.tensors.items()})
    return out


def add(total: dict, part: dict, w: float = 1.0) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + w * v


def exact_expectation(setup, ids) -> dict[str, np.ndarray]:
    with torch.no_grad():
        probs = torch.softmax(setup[0].model(input_ids=torch.tensor([ids])).logits[0, :-1], -1).numpy()
    assert probs.max(-1).min() > 0.5  # peaked: far from what a model-blind sampler draws
    total: dict[str, np.ndarray] = {}
    for s in range(1, len(ids)):  # probs[s - 1] is the distribution of token s
        for v in range(VOCAB):
            labels = [-100] * len(ids)
            labels[s] = v
            add(total, stats(setup, [Doc(0, "d", list(ids), labels)]), probs[s - 1, v])
    return total


def test_true_fisher_matches_the_exact_expectation(setup):
    exact: dict[str, np.ndarray] = {}
    groups: list[dict[str, np.ndarray]] = [{} for _ in range(GROUPS)]
    size = COPIES // GROUPS
    for d, ids in enumerate(DOCS):
        add(exact, exact_expectation(setup, ids))
        for g in range(GROUPS):  # copies differ only in their index, hence in their drawn labels
            copies = [Doc(10_000 * d + g * size + i, "c", list(ids), list(ids)) for i in range(size)]
            add(groups[g], stats(setup, copies, fisher="true", seed=5), 1 / size)
    for k in exact:
        est = np.stack([g[k] for g in groups])  # [GROUPS, ...]: independent unbiased estimates
        mean, err = est.mean(0), est.std(0, ddof=1).max() / np.sqrt(GROUPS)
        scale = np.abs(exact[k]).max()
        assert err < 0.2 * scale, k  # the error bar is tight (about 5-10% of the largest entry)
        assert np.abs(mean - exact[k]).max() <= 4 * err, (k, np.abs(mean - exact[k]).max() / err)
