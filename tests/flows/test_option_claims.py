"""Options the README promises, each checked for what it changes: `ekfac`'s --exact-max-bytes switch
between exact and projected mode, --exclude dropping modules, --gguf-file, and --dtype auto / --device auto."""

from __future__ import annotations

import pytest
import torch

from bergson_core.config import BuildConfig
from bergson_core.config.curvature import EkfacConfig
from bergson_core.curvature.run import ekfac_mode
from bergson_core.errors import ConfigError
from bergson_core.index.build import load_for_spec
from bergson_core.model.loading import resolve_device, resolve_dtype


def test_ekfac_auto_mode_switches_at_exact_max_bytes(workspace, tmp_path):
    base = {"index": str(tmp_path / "ek"), "model": workspace["model"], "dataset": workspace["corpus"],
            "queries": workspace["queries"]}
    _, modules, corpus = load_for_spec(EkfacConfig(**base).build_config("exact"))
    full = len(corpus) * sum(m.width for m in modules) * 4  # the corpus's full float32 gradients
    assert ekfac_mode(EkfacConfig(**base, exact_max_bytes=full)) == "exact"
    assert ekfac_mode(EkfacConfig(**base, exact_max_bytes=full - 1)) == "projected"
    # an explicit mode or projection wins over the size rule
    assert ekfac_mode(EkfacConfig(**base, exact_max_bytes=1, mode="exact")) == "exact"
    assert ekfac_mode(EkfacConfig(**base, projection_dim=0, exact_max_bytes=1)) == "exact"
    assert ekfac_mode(EkfacConfig(**base, projection_dim=4)) == "projected"
    with pytest.raises(ConfigError, match="--mode projected"):
        ekfac_mode(EkfacConfig(**base, mode="exact", projection_dim=4))


def test_exclude_drops_the_matching_modules(workspace, tmp_path):
    def names(**kw):
        cfg = BuildConfig(index=str(tmp_path / "i"), model=workspace["model"], dataset=workspace["corpus"], **kw)
        return [m.name for m in load_for_spec(cfg)[1]]

    every = names()
    kept = names(exclude=["*.mlp.*"])
    assert any(".mlp." in n for n in every) and kept == [n for n in every if ".mlp." not in n]
    assert names(include=["*.attn.*"], exclude=["*.c_proj"]) == [n for n in every if ".attn.c_attn" in n]


def test_auto_dtype_and_device():
    want = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == want
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float64", torch.device("cpu")) == torch.float64


def test_gguf_file_option_names_the_same_file_as_a_gguf_path(tmp_path):
    from bergson_core.config import ModelOptions
    from bergson_core.model.loading import _split_gguf

    folder = str(tmp_path / "models")
    as_path = _split_gguf(ModelOptions(model=f"{folder}/m.Q4_1.gguf"))
    as_option = _split_gguf(ModelOptions(model=folder, gguf_file="m.Q4_1.gguf"))
    assert as_path == as_option == (folder, "m.Q4_1.gguf")
    assert _split_gguf(ModelOptions(model=folder)) == (folder, None)  # a plain folder stays a folder
