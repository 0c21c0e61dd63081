"""--gradient-checkpointing: layers are recomputed in backward, and the gradient rows are the same
(float64, to rounding) as without it; the model stays in eval mode (no dropout)."""

from __future__ import annotations

import numpy as np
import pytest

from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.model.head_loss import has_plain_head
from bergson_core.model.loading import checkpoint_layers

from .helpers import TEXTS, docs_from_texts, grad_options, make_loaded


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_checkpointed_gradients_are_the_same(tokenizer, arch):
    docs = docs_from_texts(tokenizer, TEXTS[:6])
    opts = grad_options(include_bias=True)
    rows = []
    for checkpointed in (False, True):
        loaded = make_loaded(arch, tokenizer, layers=2)
        if checkpointed:
            checkpoint_layers(loaded.model)
        modules = tracked_modules(loaded, opts)
        has_plain_head(loaded.model)  # its one-off check runs forwards of its own: before counting
        calls = []
        first = loaded.model.get_submodule(modules[0].name)
        handle = first.register_forward_hook(lambda *a: calls.append(1))
        try:
            rows.append(compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)[0])
        finally:
            handle.remove()
        assert len(calls) == (2 if checkpointed else 1)  # the layer really was recomputed in backward
        assert not any(m.training for m in loaded.model.modules() if m.__class__.__name__.endswith("Dropout"))
    assert np.abs(rows[0]).max() > 1e-3
    np.testing.assert_allclose(rows[1], rows[0], rtol=1e-10, atol=1e-12 * np.abs(rows[0]).max())
