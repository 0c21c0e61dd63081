"""Statistics are sums: partials over 1, 3 and 7 shards reduce to the same totals, whatever the
batching, and survive a trip through the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bergson_core import curvature as C

from .tiny_setup import make_setup


@pytest.fixture(scope="module")
def setup():
    return make_setup("llama", n_train=21, n_query=3)


def chunks(items, k):
    bounds = np.linspace(0, len(items), k + 1).astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def assert_same(a: C.Stats, b: C.Stats, rtol=1e-12):
    assert a.kind == b.kind and a.counts == b.counts and a.meta == b.meta
    assert set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        scale = b.tensors[k].abs().max().clamp(min=1e-300)
        assert float((a.tensors[k] - b.tensors[k]).abs().max() / scale) <= rtol, k


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_model_pass_statistics_reduce_over_shards(setup, fisher):
    s = setup
    whole = C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space, fisher=fisher, seed=3)
    basis = C.fit_preconditioner("kfac", {"kfac": whole})
    lam_whole = C.lambda_partial_stats(s.loaded, s.modules, s.train, basis, fisher=fisher, seed=3)
    diag_whole = C.diagonal_partial_stats(s.loaded, s.modules, s.train, s.space, fisher=fisher, seed=3)
    sham_whole = C.shampoo_partial_stats(s.loaded, s.modules, s.train, s.space, fisher=fisher, seed=3)
    assert whole.counts["documents"] == len(s.train)
    assert whole.counts["tokens"] == sum(len(d.input_ids) for d in s.train)
    for k in (3, 7):
        parts = chunks(s.train, k)
        # each shard batched differently: sums must not depend on batching either
        kfac = [C.kfac_partial_stats(s.loaded, s.modules, p, s.space, fisher=fisher, seed=3, batch_tokens=24 * (i + 1))
                for i, p in enumerate(parts)]
        lam = [C.lambda_partial_stats(s.loaded, s.modules, p, basis, fisher=fisher, seed=3, batch_tokens=16)
               for p in parts]
        diag = [C.diagonal_partial_stats(s.loaded, s.modules, p, s.space, fisher=fisher, seed=3) for p in parts]
        sham = [C.shampoo_partial_stats(s.loaded, s.modules, p, s.space, fisher=fisher, seed=3) for p in parts]
        assert_same(C.reduce_stats(kfac), whole)
        assert_same(C.reduce_stats(lam), lam_whole)
        assert_same(C.reduce_stats(diag), diag_whole)
        assert_same(C.reduce_stats(sham), sham_whole)


def test_true_fisher_differs_from_empirical(setup):
    s = setup
    emp = C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space)
    true0 = C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space, fisher="true", seed=0)
    true1 = C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space, fisher="true", seed=1)
    name = s.modules[0].name
    a_emp, a_true = emp.tensor(name, "A"), true0.tensor(name, "A")
    assert torch.allclose(a_emp, a_true)  # activations do not depend on the labels
    s_emp, s0, s1 = emp.tensor(name, "S"), true0.tensor(name, "S"), true1.tensor(name, "S")
    assert not torch.allclose(s_emp, s0) and not torch.allclose(s0, s1)


def test_row_statistics_reduce_over_shards(setup, tmp_path):
    s = setup
    rows = s.grads(s.train)
    basis = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space)})
    whole = {
        "autocorr": C.autocorr_partial_stats(rows, s.blocks, s.space, unit_normalize=True),
        "diagonal": C.rows_diagonal_partial_stats(rows, s.blocks, s.space),
        "ekfac-lambda": C.rows_lambda_partial_stats(rows, basis),
        "shampoo": C.rows_shampoo_partial_stats(rows, s.blocks, s.space),
    }
    for k in (1, 3, 7):
        parts = chunks(rows, k)
        for kind, fn in (("autocorr", lambda r: C.autocorr_partial_stats(r, s.blocks, s.space, unit_normalize=True)),
                         ("diagonal", lambda r: C.rows_diagonal_partial_stats(r, s.blocks, s.space)),
                         ("ekfac-lambda", lambda r: C.rows_lambda_partial_stats(r, basis)),
                         ("shampoo", lambda r: C.rows_shampoo_partial_stats(r, s.blocks, s.space))):
            for i, p in enumerate(parts):  # through the store, as the map tasks do
                C.save_stats(tmp_path / f"k{k}", fn(p), shard=i)
            shards = C.list_stats_shards(tmp_path / f"k{k}", kind)
            assert shards == list(range(k))
            total = C.reduce_stats([C.load_stats(tmp_path / f"k{k}", kind, i) for i in shards])
            assert_same(total, whole[kind])


def test_model_pass_equals_stored_rows(setup):
    """Per-document sums from the curvature hooks equal those from the core capture's rows."""
    s = setup
    rows = s.grads(s.train)
    for kind, model_pass, from_rows in (
        ("diagonal", C.diagonal_partial_stats, C.rows_diagonal_partial_stats),
        ("shampoo", C.shampoo_partial_stats, C.rows_shampoo_partial_stats),
    ):
        a = model_pass(s.loaded, s.modules, s.train, s.space)
        b = from_rows(rows, s.blocks, s.space)
        assert a.kind == b.kind == kind and a.counts == b.counts
        for k in a.tensors:
            scale = b.tensors[k].abs().max()
            assert float((a.tensors[k] - b.tensors[k]).abs().max() / scale) <= 1e-10, k


def test_reduce_refuses_mixed_settings(setup):
    s = setup
    a = C.kfac_partial_stats(s.loaded, s.modules, s.train[:3], s.space)
    b = C.kfac_partial_stats(s.loaded, s.modules, s.train[3:6], s.space, fisher="true")
    with pytest.raises(C.StatisticError, match="fisher"):
        C.reduce_stats([a, b])
