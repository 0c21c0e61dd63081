"""The factorised projection computed inside the hooks equals projecting the explicit gradient,
and the projection matrices are a pure function of (module name, side, shape, kind, seed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.gradients.projection import projection_matrix

from .helpers import docs_from_texts, grad_options

P = 4


def _mat(name, side, p, n, kind, seed=0):
    return projection_matrix(name, side, p, n, kind, seed, dtype=torch.float64).numpy()


@pytest.mark.parametrize("kind", ["rademacher", "normal"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_projected_rows_equal_projected_full_gradient(loaded_models, tokenizer, texts, arch, kind):
    loaded = loaded_models(arch)
    docs = docs_from_texts(tokenizer, texts[:6])
    full_opts = grad_options(include_bias=True)
    proj_opts = grad_options(include_bias=True, projection_dim=P, projection_type=kind, projection_seed=3)
    full_mods, proj_mods = tracked_modules(loaded, full_opts), tracked_modules(loaded, proj_opts)
    assert [m.name for m in full_mods] == [m.name for m in proj_mods]
    assert all(m.width == P * P for m in proj_mods)
    full, _ = compute_gradients(loaded, full_mods, docs, full_opts, batch_tokens=10_000)
    proj, _ = compute_gradients(loaded, proj_mods, docs, proj_opts, batch_tokens=10_000)
    assert proj.shape == (len(docs), P * P * len(proj_mods))
    n = len(docs)
    for fm, pm in zip(full_mods, proj_mods):
        cols = fm.in_features + int(fm.has_bias)
        G = full[:, fm.offset : fm.offset + fm.width].reshape(n, fm.out_features, cols)
        got = proj[:, pm.offset : pm.offset + pm.width]
        p_out = _mat(fm.name, "out", P, fm.out_features, kind, 3)
        p_in = _mat(fm.name, "in", P, cols, kind, 3)
        want = (p_out @ G @ p_in.T).reshape(n, -1)
        scale = np.abs(want).max()
        assert scale > 1e-4
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * scale)
        # the same numbers as a Kronecker product acting on the row-major vec(G)
        kron = np.kron(p_out, p_in)
        np.testing.assert_allclose(got, G.reshape(n, -1) @ kron.T, rtol=1e-9, atol=1e-10 * scale)


def test_rademacher_entries_are_signs_over_sqrt_p():
    for p, n in [(4, 33), (16, 100)]:
        m = _mat("model.layers.0.mlp.up_proj", "in", p, n, "rademacher")
        assert m.shape == (p, n)
        np.testing.assert_array_equal(np.abs(m), np.full((p, n), 1 / np.sqrt(p)))
        assert 0.3 < (m > 0).mean() < 0.7


def test_normal_entries_have_variance_one_over_p():
    p, n = 64, 256
    m = _mat("transformer.h.0.attn.c_attn", "out", p, n, "normal")
    assert m.shape == (p, n)
    assert abs(m.mean()) < 0.05 / np.sqrt(p)
    assert abs((m**2).mean() * p - 1) < 0.05  # 16384 samples: ~5 standard errors
    assert len(np.unique(m)) == m.size  # genuinely continuous, not a sign matrix


def test_projection_preserves_squared_norm_in_expectation():
    """E ||P x||^2 = ||x||^2 for entries of variance 1/p: averaged over many modules' matrices."""
    x = np.random.default_rng(0).standard_normal(50)
    for kind in ["rademacher", "normal"]:
        ratios = [np.sum((_mat(f"m{i}", "in", 8, 50, kind) @ x) ** 2) / np.sum(x**2) for i in range(200)]
        assert abs(np.mean(ratios) - 1) < 0.1


def test_matrices_depend_on_name_side_seed_and_kind():
    base = _mat("a.b", "in", 8, 12, "rademacher", seed=0)
    np.testing.assert_array_equal(base, _mat("a.b", "in", 8, 12, "rademacher", seed=0))
    for other in [
        _mat("a.c", "in", 8, 12, "rademacher", seed=0),
        _mat("a.b", "out", 8, 12, "rademacher", seed=0),
        _mat("a.b", "in", 8, 12, "rademacher", seed=1),
    ]:
        assert other.shape == base.shape and not np.array_equal(other, base)
    assert not np.array_equal(np.sign(_mat("a.b", "in", 8, 12, "normal")), np.sign(base))


def test_returned_matrix_is_not_shared_with_the_cache():
    """Scaling a returned matrix in place must not change what the next caller regenerates."""
    first = projection_matrix("x.y", "in", 4, 6, "normal", 0, dtype=torch.float64)
    expected = first.clone()
    first.mul_(0)
    again = projection_matrix("x.y", "in", 4, 6, "normal", 0, dtype=torch.float64)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_matrices_regenerate_identically_in_a_fresh_process(tmp_path):
    cases = [("transformer.h.0.mlp.c_fc", "in", 4, 17, "rademacher", 0),
             ("model.layers.1.self_attn.q_proj", "out", 8, 32, "normal", 12345)]
    out = tmp_path / "m.npz"
    script = (
        "import json, sys, numpy as np, torch\n"
        "from bergson_core.gradients.projection import projection_matrix\n"
        "cases = json.loads(sys.argv[1])\n"
        "np.savez(sys.argv[2], *[projection_matrix(*c, dtype=torch.float64).numpy() for c in cases])\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(cases), str(out)], check=True, timeout=120)
    saved = np.load(out)
    for i, case in enumerate(cases):
        np.testing.assert_array_equal(saved[f"arr_{i}"], _mat(*case))
    # float32 copies (what the hooks use on a float32 model) are the rounded float64 numbers
    f32 = projection_matrix(*cases[1], dtype=torch.float32).numpy()
    np.testing.assert_array_equal(f32, _mat(*cases[1]).astype(np.float32))
