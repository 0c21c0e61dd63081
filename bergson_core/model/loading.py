"""Loading causal LMs and tokenizers: local folders, hub ids and GGUF files.

Loaded models are cached per process, so the many shard tasks of one run (and a preload started
while the orchestrator boots) share one copy. A lock serialises hooked passes over a shared model.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from dataclasses import dataclass

import torch

from ..config import ModelOptions
from ..errors import ConfigError, InputError
from .experts import split_experts

_CACHE: dict[tuple, "LoadedModel"] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _split_gguf(opts: ModelOptions) -> tuple[str, str | None]:
    """A path to a .gguf file becomes (its folder, its file name)."""
    if opts.gguf_file is None and opts.model.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(opts.model)), os.path.basename(opts.model)
    return opts.model, opts.gguf_file


def _looks_local(uri: str) -> bool:
    return uri.startswith(("/", "./", "../", "~")) or os.path.exists(uri) or uri.count("/") > 1


def load_model(opts: ModelOptions) -> LoadedModel:
    """Load (or fetch from the process cache) the model and tokenizer named by `opts`."""
    if not opts.model:
        raise InputError("no model given: pass --model PATH_OR_HUB_ID")
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    key = (opts.model, opts.revision, opts.gguf_file, str(dtype), str(device), *_adapter_key(opts),
           bool(getattr(opts, "gradient_checkpointing", False)),
           getattr(opts, "device_map", None), getattr(opts, "offload_folder", None))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(opts, device, dtype)
        return _CACHE[key]


def _load(opts: ModelOptions, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri, gguf = _split_gguf(opts)
    if _looks_local(uri) and not os.path.exists(os.path.expanduser(uri)):
        raise InputError(f"model path {uri!r} does not exist: pass a Hugging Face folder, hub id or .gguf file")
    kwargs = {"revision": opts.revision} if opts.revision else {}
    if gguf:
        kwargs["gguf_file"] = gguf
    dispatch = _dispatch(opts)
    if dispatch and (_adapter_key(opts) != (None, None)):
        raise ConfigError("--device-map does not take --adapter / --new-lora yet: drop one of them")
    try:
        tokenizer = AutoTokenizer.from_pretrained(uri, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(uri, dtype=dtype, **kwargs, **dispatch)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not load model {opts.model!r}: {first}") from e
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met a pickle that would run code
        raise InputError(f"could not load model {opts.model!r}: its weights file holds objects a weights-only load "
                         "refuses (a pickle that runs code); convert it to safetensors") from e
    if dispatch:  # Accelerate placed (and maybe offloaded) the weights; its hooks move activations
        if split_experts(model, dry_run=True):
            raise ConfigError("--device-map does not take mixture-of-experts models yet: drop --device-map")
        model.eval()
    else:
        split_experts(model)  # fused MoE expert tensors -> one tracked linear per expert
        _attach_adapters(model, opts)
        model.to(device=device, dtype=dtype).eval()  # also the adapter's new layers
    model.requires_grad_(False)
    if getattr(opts, "gradient_checkpointing", False):
        checkpoint_layers(model)
    return LoadedModel(model, tokenizer, device, dtype, threading.Lock())


def _dispatch(opts) -> dict:
    """from_pretrained's device_map / offload_folder for --device-map (a name or a JSON map)."""
    device_map = getattr(opts, "device_map", None)
    if not device_map:
        return {}
    if device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--device-map is not valid JSON ({e.msg}): give auto or {{\"module\": \"device\"}}") from None
    out = {"device_map": device_map}
    if getattr(opts, "offload_folder", None):
        out["offload_folder"] = opts.offload_folder
    return out


def _adapter_key(opts) -> tuple:
    """--adapter / --new-lora of a config that has them (BuildConfig), else nothing."""
    return getattr(opts, "adapter", None), getattr(opts, "new_lora", None)


def _attach_adapters(model: torch.nn.Module, opts) -> None:
    adapter, new_lora = _adapter_key(opts)
    if adapter and new_lora:
        raise ConfigError("give --adapter or --new-lora, not both")
    from .adapters import attach_adapter, attach_new_lora

    if adapter:
        attach_adapter(model, adapter)
    elif new_lora:
        attach_new_lora(model, new_lora)


def parameter_sums(model: torch.nn.Module):
    """(name, shape, float64 sum) of every parameter, as model.named_parameters() lists them; weights
    that --device-map put on disk (meta tensors here) are read back through Accelerate's hook."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta":
                from accelerate.utils import align_module_device

                owner, _, attr = name.rpartition(".")
                module = model.get_submodule(owner)
                with align_module_device(module, torch.device("cpu")):
                    total = getattr(module, attr).double().sum().item()
            else:
                total = p.double().sum().item()
            yield name, tuple(p.shape), total


def checkpoint_layers(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (transformers' non-reentrant activation
    checkpointing) while the model stays in eval mode: transformers checkpoints a layer only when that
    layer's own `training` flag is set, so only the layer modules get it, and no dropout switches on."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing: drop "
                          "--gradient-checkpointing")
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.config.use_cache = False  # a KV cache would be written twice (forward and recompute)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no checkpointable layers: drop --gradient-checkpointing")
    for layer in layers:
        layer.training = True  # the flag alone: its submodules (dropout) stay in eval mode


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
