"""PEFT (LoRA) adapters on a loaded model: attributing through the adapter weights only.

The adapter is injected into the transformers model in place (peft's `inject_adapter_in_model`), so
the model keeps its class, its LM head and its body, and the chunked head loss and hooks work as for
a dense model. Each LoRA factor is its own `nn.Linear` (`...q_proj.lora_A.default`,
`...q_proj.lora_B.default`), so its per-document gradient is captured and projected like any linear;
with an adapter on, only these factors are tracked (the frozen base weights are not what was tuned).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import ConfigError, InputError

ADAPTER_GLOBS = ["*.lora_A.*", "*.lora_B.*"]  # the LoRA factors' linears, one module per factor
NEW_LORA_SEED = 0  # a fresh adapter is the same in every process (queries and corpus must agree)


def _tuner_layers(model: torch.nn.Module) -> list:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapter(model: torch.nn.Module) -> bool:
    return bool(_tuner_layers(model))


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("--adapter / --new-lora need the `peft` package: pip install peft") from None
    return peft


def attach_adapter(model: torch.nn.Module, path: str) -> None:
    """Load the PEFT adapter saved at `path` into `model`; refuse one made for another base model."""
    peft = _peft()
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not os.path.isdir(os.path.expanduser(path)):
        raise InputError(f"adapter {path!r} is not a folder: pass a PEFT adapter saved with save_pretrained")
    path = os.path.expanduser(path)
    try:
        config = peft.PeftConfig.from_pretrained(path)
        weights = load_peft_weights(path, device="cpu")
    except (OSError, ValueError) as e:
        raise InputError(f"could not read adapter {path!r}: {_first_line(e)}") from e
    try:
        peft.inject_adapter_in_model(config, model)
        result = set_peft_model_state_dict(model, weights)
    except (ValueError, RuntimeError) as e:  # no target module matches, or the shapes differ
        raise InputError(f"adapter {path!r} does not fit this model (made for another base model?): "
                         f"{_first_line(e)}") from e
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing:  # peft would leave these factors at their fresh initialisation, silently
        raise InputError(f"adapter {path!r} does not fit this model (made for another base model?): "
                         f"{len(missing)} adapter weights missing, e.g. {missing[0]}")


def parse_lora_spec(spec: str) -> dict:
    """`r=8,alpha=16,target_modules=q_proj|v_proj,dropout=0` as LoraConfig keyword arguments."""
    known = {"r": int, "alpha": int, "dropout": float, "target_modules": str}
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ConfigError(f"--new-lora {spec!r}: {part!r} is not one of {', '.join(k + '=...' for k in known)}")
        try:
            out[key] = known[key](value.strip())
        except ValueError:
            raise ConfigError(f"--new-lora {spec!r}: {key} needs a {known[key].__name__}, got {value!r}") from None
    if "target_modules" not in out:
        raise ConfigError(f"--new-lora {spec!r}: name the modules to adapt, e.g. target_modules=q_proj|v_proj")
    return {
        "r": out.get("r", 8),
        "lora_alpha": out.get("alpha", out.get("r", 8)),
        "lora_dropout": out.get("dropout", 0.0),
        "target_modules": out["target_modules"].split("|"),
    }


def attach_new_lora(model: torch.nn.Module, spec: str) -> None:
    """A freshly initialised LoRA adapter (peft's default init: B = 0, so only B has gradients at
    first), drawn with a fixed seed so that every process builds the same one."""
    peft = _peft()
    config = peft.LoraConfig(**parse_lora_spec(spec))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(NEW_LORA_SEED)
        try:
            peft.inject_adapter_in_model(config, model)
        except ValueError as e:
            raise ConfigError(f"--new-lora {spec!r} does not fit this model: {_first_line(e)}") from e


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model's forward (adapters off) inside the block."""
    layers = _tuner_layers(model)
    frozen = [p for layer in layers for p in layer.parameters() if not p.requires_grad]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p in frozen:  # peft marks re-enabled adapters trainable; hooks need them frozen
            p.requires_grad_(False)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
