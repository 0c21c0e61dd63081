"""--device-map: a model dispatched by Accelerate with a layer offloaded to disk gives the same
gradient rows and the same fingerprint as the plain model, through one replica."""

from __future__ import annotations

import json

import numpy as np

from bergson_core.config import BuildConfig
from bergson_core.data.corpus import tokenize_rows
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.index.build import build_shard, model_fingerprint, open_corpus, prepare_build
from bergson_core.index.store import Index, grad_matrix
from bergson_core.model.loading import clear_cache, load_model
from bergson_core.model.replicas import replica_pool
from bergson_core.model.tiny import save_tiny

from .helpers import TEXTS, write_jsonl

OFFLOAD = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
           "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_offloaded_model_gives_the_plain_gradients(tmp_path):
    model = save_tiny(str(tmp_path / "m"), "llama", TEXTS, hidden=16, layers=2)
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS[:6]])
    common = dict(model=model, dataset=data, device="cpu", dtype="float64", projection_dim=0,
                  grad_dtype="float32", include_bias=True)
    plain = BuildConfig(index=str(tmp_path / "plain"), **common)
    offloaded = BuildConfig(index=str(tmp_path / "off"), device_map=json.dumps(OFFLOAD),
                            offload_folder=str(tmp_path / "offload"), **common)
    clear_cache()
    try:
        loaded = load_model(plain)
        docs = tokenize_rows(open_corpus(data, "train", {}), 0, 6, loaded.tokenizer, 64)
        want, _ = compute_gradients(loaded, tracked_modules(loaded, plain), docs, plain, 100_000)
        disp = load_model(offloaded)
        assert disp.model.get_submodule("model.layers.1.mlp.up_proj").weight.device.type == "meta"  # on disk
        assert model_fingerprint(disp.model) == model_fingerprint(loaded.model)
        assert len(replica_pool(offloaded)) == 1
        prepare_build(offloaded)
        build_shard(offloaded, 0, 0, 6)
        got = grad_matrix(Index(offloaded.index).open_shard(0))
    finally:
        clear_cache()
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-7 * np.abs(want).max())
