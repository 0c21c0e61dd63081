"""On-disk progress of one MAGIC run, so a run killed halfway resumes where it stopped.

What is saved is what the run holds anyway: the training states the checkpointing schedule keeps
during the forward phase (all T for `every`, every k-th for `sqrt`; for `log`, which keeps none, the
latest k-th state as a resume point), and in the backward phase, at every k-th step, the cotangent
of the state reached, the accumulated dQ/dw and the query group. A finished query group's
metagradients are saved whole. Restarting loads them and continues with the same floating-point
operations on the same bits, so the result is bit-identical to a run that never stopped.

Layout of the folder (local or any fsspec URL):

    manifest.json                  the only thing read first: key, run facts, and the files it trusts
    state-<step>.safetensors       a training state: "p:<param>", "o:<kind>:<param>"
    back-<group>-<step>.safetensors  cotangent "p:..", "o:..", and "wbar"
    done-<group>.safetensors       "metagradients" of one finished query group

Every file is written whole (fs.write_bytes: rename locally, one PUT remotely) before the manifest
names it, and the manifest is rewritten last, so a file it does not name (a write cut short) is
never read. A manifest with another key or other run facts is a different run: the folder is wiped.
"""

from __future__ import annotations

import torch
from safetensors.torch import load, save

from ... import fs as fsu
from .metagrad import State

MANIFEST = "manifest.json"


def state_tensors(st: State) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory, and .cpu() of a CPU tensor is the same tensor
    out = {f"p:{n}": t.detach().cpu().clone().contiguous() for n, t in st.params.items()}
    out.update({f"o:{k}:{n}": t.detach().cpu().clone().contiguous() for n, s in st.opt.items() for k, t in s.items()})
    return out


def tensors_state(step: int, tensors: dict[str, torch.Tensor], device) -> State:
    params, opt = {}, {}
    for key, t in tensors.items():
        if key.startswith("p:"):
            params[key[2:]] = t.to(device)
        elif key.startswith("o:"):
            kind, name = key[2:].split(":", 1)
            opt.setdefault(name, {})[kind] = t.to(device)
    for name in params:
        opt.setdefault(name, {})  # SGD without momentum has no optimizer state
    return State(step, params, opt)


class StateStore:
    """The resume folder of one run, named by `url`; `key` identifies the recipe that run computes."""

    def __init__(self, url: str, key: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.key = key
        self.fs, self.root = fsu.url_to_fs(self.url, storage_options)
        self.manifest = self._empty({})

    def _empty(self, facts: dict) -> dict:
        return {"key": self.key, "facts": facts, "forward": {"kept": [], "reached": 0, "resume": None},
                "backward": None, "done": {}}

    def _path(self, name: str) -> str:
        return fsu.join(self.root, name)

    def _write(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        fsu.write_bytes(self.fs, self._path(name), save(tensors))

    def _read(self, name: str) -> dict[str, torch.Tensor]:
        with self.fs.open(self._path(name), "rb") as f:
            return load(f.read())

    def _commit(self) -> None:
        fsu.write_json(self.fs, self._path(MANIFEST), self.manifest)  # last: names only whole files

    def _drop(self, name: str | None) -> None:
        if name:
            fsu.remove(self.fs, self._path(name))

    def open(self, facts: dict) -> None:
        """Read what an earlier run of the same key and facts left; anything else is wiped."""
        path = self._path(MANIFEST)
        found = fsu.read_json(self.fs, path) if fsu.exists(self.fs, path) else None
        if found and found.get("key") == self.key and found.get("facts") == facts:
            self.manifest = found
            return
        self.clear()
        self.manifest = self._empty(facts)

    def clear(self) -> None:
        fsu.remove(self.fs, self.root, recursive=True)

    # -- forward phase ----------------------------------------------------------------------------
    def kept_steps(self) -> list[int]:
        return list(self.manifest["forward"]["kept"])

    def reached(self) -> int:
        """The latest forward step saved (0: nothing)."""
        return self.manifest["forward"]["reached"]

    def load_state(self, step: int, device) -> State:
        return tensors_state(step, self._read(f"state-{step:06d}.safetensors"), device)

    def save_state(self, st: State, kept: bool) -> None:
        """Save a forward state: one the schedule keeps, or (not kept) a resume point that replaces
        the previous one once the manifest no longer names it."""
        name = f"state-{st.step:06d}.safetensors"
        self._write(name, state_tensors(st))
        fwd = self.manifest["forward"]
        old = fwd["resume"]
        if kept:
            fwd["kept"].append(st.step)
            fwd["resume"] = None
        else:
            fwd["resume"] = name
        fwd["reached"] = st.step
        self._commit()
        if old != fwd["resume"]:
            self._drop(old)

    # -- backward phase ---------------------------------------------------------------------------
    def backward(self) -> dict | None:
        """{"group": first seed row, "step": s} of the latest saved backward position, or None."""
        return self.manifest["backward"]

    def load_backward(self, device) -> tuple[State, torch.Tensor]:
        pos = self.manifest["backward"]
        tensors = self._read(pos["file"])
        wbar = tensors.pop("wbar").to(device)
        return tensors_state(pos["step"], tensors, device), wbar

    def save_backward(self, group: int, bar: State, wbar: torch.Tensor) -> None:
        """The cotangent of state bar.step and dQ/dw so far, for query group `group`."""
        name = f"back-{group:06d}-{bar.step:06d}.safetensors"
        self._write(name, {**state_tensors(bar), "wbar": wbar.detach().cpu().clone().contiguous()})
        old = self.manifest["backward"]
        self.manifest["backward"] = {"group": group, "step": bar.step, "file": name}
        self._commit()
        self._drop(old and old["file"])

    def done(self) -> dict[int, torch.Tensor]:
        """Finished query groups: {first seed row: metagradients [R, ...]}."""
        return {int(g): self._read(name)["metagradients"] for g, name in self.manifest["done"].items()}

    def save_done(self, group: int, grads: torch.Tensor) -> None:
        name = f"done-{group:06d}.safetensors"
        self._write(name, {"metagradients": grads.detach().cpu().clone().contiguous()})
        old = self.manifest["backward"]
        self.manifest["done"][str(group)] = name
        self.manifest["backward"] = None
        self._commit()
        self._drop(old and old["file"])
