"""Every reader of `.pt` / `.bin` files refuses a pickle that runs code: the optimizer states of the
gradient normalisers (a file, a Trainer checkpoint folder) and a model folder holding only
`pytorch_model.bin`. The payload creates a folder; a full unpickle of the same file does run it."""

from __future__ import annotations

import os

import pytest
import torch

from bergson_core.config import ModelOptions
from bergson_core.errors import UserError
from bergson_core.gradients.normalizers import load_normalizers
from bergson_core.model.loading import load_model
from bergson_core.model.modules import find_modules
from bergson_core.model.tiny import save_tiny, tiny_model, train_tokenizer


class Payload:
    """Unpickling this calls os.makedirs(target): the visible side effect of running code."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def _malicious(path, target: str, tensors: dict | None = None) -> str:
    torch.save({**(tensors or {}), "state": {0: {"exp_avg_sq": Payload(target)}}, "param_groups": []}, path)
    return str(path)


def test_the_payload_runs_under_a_full_unpickle(tmp_path):
    """The control: without weights_only the file does execute code, so the refusals below matter."""
    target = str(tmp_path / "ran")
    torch.load(_malicious(tmp_path / "x.pt", target), weights_only=False)
    assert os.path.isdir(target)


@pytest.mark.parametrize("where", ["file.pt", "file.bin", "checkpoint/optimizer.pt"])
def test_normalizers_refuse_a_malicious_optimizer_state(tmp_path, where):
    tok = train_tokenizer(["a b c d", "c d e f"])
    model = tiny_model("gpt2", len(tok), hidden=8, layers=1)
    modules = find_modules(model, [], [], False, 0)
    path = tmp_path / where
    path.parent.mkdir(exist_ok=True)
    target = str(tmp_path / "ran")
    _malicious(path, target)
    arg = str(path.parent) if where.startswith("checkpoint/") else str(path)
    with pytest.raises(UserError, match="weights_only=True"):
        load_normalizers(arg, model, modules, kind="adam")
    assert not os.path.exists(target)


def test_model_folder_with_a_malicious_pytorch_model_bin_is_refused(tmp_path):
    folder = save_tiny(str(tmp_path / "model"), "gpt2", ["a b c d", "c d e f"], hidden=8, layers=1)
    os.remove(os.path.join(folder, "model.safetensors"))  # leaves transformers only the pickle to read
    target = str(tmp_path / "ran")
    torch.save({"transformer.wte.weight": Payload(target)}, os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(UserError, match="could not load model"):
        load_model(ModelOptions(model=folder, device="cpu", dtype="float32"))
    assert not os.path.exists(target)
