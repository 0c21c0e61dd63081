"""Loading causal LMs and tokenizers: local folders, hub ids and GGUF files.

Loaded models are cached per process, so the many shard tasks of one run (and a preload started
while the orchestrator boots) share one copy. A lock serialises hooked passes over a shared model.
"""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass

import torch

from ..config import ModelOptions
from ..errors import InputError

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
    key = (opts.model, opts.revision, opts.gguf_file, str(dtype), str(device))
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(uri, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(uri, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"could not load model {opts.model!r}: {first}") from e
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met a pickle that would run code
        raise InputError(f"could not load model {opts.model!r}: its weights file holds objects a weights-only load "
                         "refuses (a pickle that runs code); convert it to safetensors") from e
    model.to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, device, dtype, threading.Lock())


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
