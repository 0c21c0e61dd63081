"""Bad input gives one-line UserErrors and leaves nothing trusted behind: a preconditioner from
another projection, gradients of the wrong width, non-finite statistics, corrupt files, an EK-FAC
correction gathered in another eigenbasis."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from bergson_core import curvature as C
from bergson_core.errors import StoreError, UserError

from .tiny_setup import make_setup


@pytest.fixture(scope="module")
def projected():
    s = make_setup("gpt2", n_train=8, n_query=2, projection_dim=4)
    rows = s.grads(s.train)
    fit = C.fit_preconditioner("autocorr", {"autocorr": C.autocorr_partial_stats(rows, s.blocks, s.space)})
    return s, rows, fit


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_preconditioner_from_another_projection_is_refused(projected, tmp_path):
    s, rows, fit = projected
    C.save_preconditioner(tmp_path, "ts", fit)
    assert C.load_preconditioner(tmp_path, "ts", space=s.space).fingerprint() == fit.fingerprint()
    for other in (C.Space(4, "rademacher", 1, True), C.Space(8, "rademacher", 0, True), C.Space(4, "normal", 0, True),
                  C.Space(0, include_bias=True)):
        with pytest.raises(StoreError) as e:
            C.load_preconditioner(tmp_path, "ts", space=other)
        assert "refit" in one_line(e)
        with pytest.raises(StoreError):
            C.apply(fit, rows, space=other)
    with pytest.raises(UserError) as e:  # rows of another width
        C.apply(fit, rows[:, :-1])
    assert "expects rows of" in one_line(e)


def test_non_finite_statistics_are_refused_and_not_written(tmp_path):
    s = make_setup("llama", n_train=4, n_query=1)
    bad = copy.copy(s.loaded)
    bad.model = copy.deepcopy(s.loaded.model)
    with torch.no_grad():
        bad.model.get_submodule(s.modules[0].name).weight[0, 0] = float("nan")
    stats = C.kfac_partial_stats(bad, s.modules, s.train, s.space)
    with pytest.raises(C.StatisticError) as e:
        C.save_stats(tmp_path, stats, shard=0)
    assert "non-finite" in one_line(e)
    assert not os.path.exists(tmp_path / "stats")  # nothing written
    assert not C.has_stats(tmp_path, "kfac", 0)
    with pytest.raises(C.StatisticError):
        C.fit_preconditioner("kfac", {"kfac": stats})
    good = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(s.loaded, s.modules, s.train, s.space)})
    good.tensors[next(iter(good.tensors))][0] = float("inf")
    with pytest.raises(C.StatisticError):
        C.save_preconditioner(tmp_path, "kfac", good)
    assert not os.path.exists(tmp_path / "precond")


def test_corrupt_or_missing_files(projected, tmp_path):
    s, rows, fit = projected
    stats = C.autocorr_partial_stats(rows, s.blocks, s.space)
    C.save_stats(tmp_path, stats, shard=2)
    data = tmp_path / "stats" / "autocorr" / "shard-00002.safetensors"
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(StoreError) as e:
        C.load_stats(tmp_path, "autocorr", 2)
    assert "checksum" in one_line(e)
    with pytest.raises(StoreError, match="compute them first"):
        C.load_stats(tmp_path, "autocorr", 3)
    with pytest.raises(StoreError, match="fit it first"):
        C.load_preconditioner(tmp_path, "nope")
    # a data file without its manifest does not exist
    (tmp_path / "stats" / "autocorr" / "shard-00002.json").unlink()
    assert C.list_stats_shards(tmp_path, "autocorr") == [] and not C.has_stats(tmp_path, "autocorr", 2)


def test_ekfac_correction_from_another_basis_is_refused():
    s = make_setup("gpt2", n_train=6, n_query=1)
    k1 = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(s.loaded, s.modules, s.train[:3], s.space)})
    k2 = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(s.loaded, s.modules, s.train[3:], s.space)})
    lam = C.lambda_partial_stats(s.loaded, s.modules, s.train, k1)
    with pytest.raises(C.StatisticError, match="another KFAC eigenbasis"):
        C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=k2)
    with pytest.raises(UserError, match="needs a fitted kfac"):
        C.fit_preconditioner("ekfac", {"ekfac-lambda": lam})
    with pytest.raises(UserError, match="unknown preconditioner"):
        C.fit_preconditioner("shampoo2", {})
