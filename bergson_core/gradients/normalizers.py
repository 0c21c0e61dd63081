"""Gradient normalisers read from an optimizer state (Adam and Adafactor second moments).

TrackStar (Chang et al. 2024) divides each per-document gradient elementwise by the optimizer's
root-mean-square gradient, so that directions the optimizer rescales anyway do not dominate:

  Adam      (Kingma & Ba 2015):  G / (sqrt(v_hat) + eps),  v_hat = v / (1 - beta2^step)
  Adafactor (Shazeer & Stern 2018): v ~ outer(R, C) / mean(R) from the factored row / column
            moments, so G * rsqrt(v) = diag(r) G diag(c): a row scale r [O] and a column scale
            c [I] that can be folded into the hooks (g_t * r, a_t * c) without forming G.

Sources: a Hugging Face Trainer checkpoint folder (its `optimizer.pt`, read with
torch.load(weights_only=True), never a full unpickle), a `.pt`/`.bin` optimizer state_dict, or a
`.safetensors` file whose keys are `<parameter name>.exp_avg_sq` (Adam) or
`<parameter name>.exp_avg_sq_row` / `.exp_avg_sq_col` (Adafactor). A torch state_dict numbers
parameters instead of naming them; names are recovered from the model by the Trainer's grouping
(weight-decay parameters first, then the rest) or plain `named_parameters` order, whichever matches
the group sizes and every shape. Module weights are matched in the capture layout out x in, so a
GPT-2 Conv1D (stored in x out) is transposed; a mismatch is a `NormalizerError`.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from ..errors import UserError
from ..model.modules import ModuleInfo

ADAM_KEYS = ("exp_avg_sq",)
ADAFACTOR_KEYS = ("exp_avg_sq_row", "exp_avg_sq_col")
_NEW_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
_OLD_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm"]


class NormalizerError(UserError):
    """An optimizer state that cannot normalise this model's gradients."""


# -- reading ------------------------------------------------------------------------------------
def _resolve(path: str) -> str:
    if os.path.isdir(path):
        for name in ("optimizer.pt", "optimizer.bin", "optimizer.safetensors"):
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise NormalizerError(f"no optimizer.pt in {path}: pass a Trainer checkpoint folder (checkpoint-N)")
    if not os.path.exists(path):
        raise NormalizerError(f"optimizer state {path} does not exist: pass a checkpoint folder or a file")
    return path


_fingerprints: dict[tuple, str] = {}


def state_fingerprint(path: str) -> str:
    """sha256 (16 hex digits) of the optimizer-state file `path` resolves to; it goes into the index
    spec, so gradients normalised by another state are refused. Cached per (file, size, mtime)."""
    import hashlib

    resolved = os.path.realpath(_resolve(path))
    st = os.stat(resolved)
    key = (resolved, st.st_size, st.st_mtime_ns)
    if key not in _fingerprints:
        h = hashlib.sha256()
        with open(resolved, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _fingerprints[key] = h.hexdigest()[:16]
    return _fingerprints[key]


def _no_decay_type(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm)


def _decay_names(model: nn.Module, patterns: list[str]) -> set[str]:
    regs = [re.compile(p) for p in patterns]
    owners = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = mod
    return {n for n, _ in model.named_parameters()
            if not _no_decay_type(owners.get(n)) and not any(r.search(n.lower()) for r in regs)}


def _orderings(model: nn.Module) -> list[tuple[str, list[list[str]]]]:
    names = [n for n, _ in model.named_parameters()]
    out = [("plain", [names])]
    for label, pats in (("trainer", _NEW_NO_DECAY), ("trainer-4x", _OLD_NO_DECAY)):
        decay = _decay_names(model, pats)
        out.append((label, [[n for n in names if n in decay], [n for n in names if n not in decay]]))
    return out


def _name_torch_state(sd: dict, model: nn.Module, path: str) -> dict[str, dict[str, torch.Tensor]]:
    """Map an optimizer state_dict's numbered entries to parameter names of `model`."""
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise NormalizerError(f"{path} is not an optimizer state_dict (no 'state'/'param_groups')")
    groups = [list(g["params"]) for g in sd["param_groups"]]
    shapes = dict(model.named_parameters())
    problems = []
    for label, order in _orderings(model):
        order = [o for o in order if o] if len(groups) != len(order) else order
        if [len(g) for g in groups] != [len(o) for o in order]:
            problems.append(f"{label}: groups of {[len(o) for o in order]} parameters")
            continue
        named, bad = {}, None
        for ids, pnames in zip(groups, order):
            for idx, pname in zip(ids, pnames):
                entry = sd["state"].get(idx, {})
                want = tuple(shapes[pname].shape)
                expect = {"exp_avg_sq": want, "exp_avg_sq_row": want[:-1], "exp_avg_sq_col": want[:-2] + want[-1:]}
                for k, t in entry.items():
                    if k in expect and tuple(t.shape) != expect[k]:
                        bad = f"{label}: state #{idx} {k} {list(t.shape)} vs {pname} {list(want)}"
                if bad:
                    break
                named[pname] = {**entry, **_hyper(sd["param_groups"], idx)}
            if bad:
                break
        if bad is None:
            return named
        problems.append(bad)
    sizes = [len(g) for g in groups]
    raise NormalizerError(
        f"optimizer state {path} does not belong to this model (state groups of {sizes} parameters; "
        f"{'; '.join(problems)}): use the checkpoint saved with this model"
    )


def _hyper(param_groups: list[dict], idx: int) -> dict:
    for g in param_groups:
        if idx in g["params"]:
            return {f"hp_{k}": v for k, v in g.items() if k in ("eps", "betas", "beta2")}
    return {}


def load_optimizer_state(path: str, model: nn.Module) -> dict[str, dict]:
    """Per-parameter optimizer state {name: {"exp_avg_sq": ..., "step": ..., "hp_eps": ...}}."""
    path = _resolve(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        flat = load_file(path)
        named: dict[str, dict] = {}
        for k, t in flat.items():
            for suffix in ADAM_KEYS + ADAFACTOR_KEYS + ("step",):
                if k.endswith("." + suffix):
                    named.setdefault(k[: -len(suffix) - 1], {})[suffix] = t
                    break
            else:
                named.setdefault(k, {})["exp_avg_sq"] = t
        return named
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, wrong file type: all mean "not an optimizer state"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NormalizerError(f"could not read optimizer state {path} with weights_only=True: {first}") from e
    return _name_torch_state(sd, model, path)


# -- matching modules -----------------------------------------------------------------------------
def _param(state: dict, name: str, keys: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    if name not in state:
        raise NormalizerError(f"optimizer state has no entry for {name}: it is from another model or froze it")
    entry = state[name]
    missing = [k for k in keys if k not in entry]
    if missing:
        raise NormalizerError(f"optimizer state of {name} has no {', '.join(missing)}: it is not a {what} state")
    return entry


def _check_shape(t: torch.Tensor, shape: tuple, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise NormalizerError(
            f"optimizer state of {name} has shape {list(t.shape)} but the model's is {list(shape)}: "
            "the state is from another model"
        )


def _stored_shape(info: ModuleInfo) -> tuple[int, int]:
    return (info.in_features, info.out_features) if info.transposed else (info.out_features, info.in_features)


class ElementwiseNormalizer:
    """G -> G * scale, with scale [O, I(+1)] (float64, moved to the gradient's device once)."""

    def __init__(self, scale: torch.Tensor):
        self.scale = scale
        self._cache: dict = {}

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:  # [B, O, I(+1)]
        k = (grad.device, grad.dtype)
        if k not in self._cache:
            self._cache[k] = self.scale.to(device=grad.device, dtype=grad.dtype)
        return grad * self._cache[k]


class FactoredNormalizer(ElementwiseNormalizer):
    """Adafactor: scale = outer(row_scale [O], col_scale [I]) (+ a bias column), foldable into hooks."""

    def __init__(self, row_scale: torch.Tensor, col_scale: torch.Tensor, bias_scale: torch.Tensor | None):
        scale = torch.outer(row_scale, col_scale)  # [O, I]
        if bias_scale is not None:
            scale = torch.cat([scale, bias_scale[:, None]], dim=1)  # [O, I+1]
        super().__init__(scale)
        self.row_scale, self.col_scale, self.bias_scale = row_scale, col_scale, bias_scale


def adam_normalizers(state: dict, modules: list[ModuleInfo], eps: float | None = None,
                     bias_correction: bool = True) -> dict[str, ElementwiseNormalizer]:
    """Adam normalisers per module: scale = 1 / (sqrt(v_hat) + eps); eps defaults to the state's."""
    out = {}
    for info in modules:
        parts = [(f"{info.name}.weight", _stored_shape(info), info.transposed)]
        if info.has_bias:
            parts.append((f"{info.name}.bias", (info.out_features,), False))
        denoms = []
        for pname, shape, transposed in parts:
            entry = _param(state, pname, ADAM_KEYS, "Adam")
            v = entry["exp_avg_sq"].to(torch.float64)
            _check_shape(v, shape, pname)
            if bias_correction and "step" in entry and "hp_betas" in entry:
                step = float(entry["step"])
                if step > 0:
                    v = v / (1.0 - float(entry["hp_betas"][1]) ** step)
            e = eps if eps is not None else float(entry.get("hp_eps", 1e-8))
            d = v.sqrt() + e
            denoms.append(d.T if transposed else d)
        denom = denoms[0] if len(denoms) == 1 else torch.cat([denoms[0], denoms[1][:, None]], dim=1)
        out[info.name] = ElementwiseNormalizer(1.0 / denom)  # [O, I(+1)]
    return out


def adafactor_normalizers(state: dict, modules: list[ModuleInfo], eps: float = 1e-30) -> dict[str, FactoredNormalizer]:
    """Adafactor normalisers per module from the factored second moments (HF `Adafactor` layout)."""
    out = {}
    for info in modules:
        wname = f"{info.name}.weight"
        entry = _param(state, wname, ADAFACTOR_KEYS, "factored Adafactor")
        rows, cols = _stored_shape(info)
        row, col = entry["exp_avg_sq_row"].to(torch.float64), entry["exp_avg_sq_col"].to(torch.float64)
        _check_shape(row, (rows,), wname + " (row moments)")
        _check_shape(col, (cols,), wname + " (column moments)")
        r = (row / row.mean()).clamp(min=eps).rsqrt()  # [stored rows]
        c = col.clamp(min=eps).rsqrt()  # [stored cols]
        row_scale, col_scale = (c, r) if info.transposed else (r, c)  # to out x in
        bias_scale = None
        if info.has_bias:
            bname = f"{info.name}.bias"
            b = _param(state, bname, ADAM_KEYS, "Adafactor")["exp_avg_sq"].to(torch.float64)
            _check_shape(b, (info.out_features,), bname)
            bias_scale = b.clamp(min=eps).rsqrt()
        out[info.name] = FactoredNormalizer(row_scale, col_scale, bias_scale)
    return out


def load_normalizers(path: str, model: nn.Module, modules: list[ModuleInfo], kind: str = "auto",
                     eps: float | None = None, bias_correction: bool = True) -> dict[str, ElementwiseNormalizer]:
    """Normalisers for `modules` from the optimizer state at `path` ("adam", "adafactor" or "auto");
    the result plugs into GradientCollector(normalizers=...)."""
    state = load_optimizer_state(path, model)
    if kind == "auto":
        kind = "adafactor" if any("exp_avg_sq_row" in e for e in state.values()) else "adam"
    if kind == "adam":
        return adam_normalizers(state, modules, eps, bias_correction)
    if kind == "adafactor":
        return adafactor_normalizers(state, modules, 1e-30 if eps is None else eps)
    raise NormalizerError(f"unknown normalizer kind {kind!r}: use adam, adafactor or auto")
