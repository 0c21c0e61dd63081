"""The bank: query losses of models retrained on subsets, stored once and reused for any number of
score files (evaluating a new method costs no retraining).

Layout (deterministic names; no pickle):

    <bank>/bank.json                 recipe, its hash, documents, queries, subset ids (written first)
    <bank>/subsets.safetensors       masks [S, N] uint8 (1 = kept)
    <bank>/runs/<run>.safetensors    query losses [Q] float64 of one retrained model
    <bank>/runs/<run>.json           its manifest (sha256 of the losses, seconds, steps), WRITTEN LAST
    <bank>/full/checkpoint-<n>/      the model trained on every document (weights, optimizer, history)

A run without its manifest does not exist, so a killed validate run redoes only unfinished runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .. import fs as fsu
from ..config import CODE_VERSION
from ..errors import StoreError

BANK_FILE = "bank.json"
MASKS_FILE = "subsets.safetensors"
RUNS_DIR = "runs"
FULL_RUN = "full"
FULL_DIR = "full"


def subset_run(i: int) -> str:
    return f"subset-{i:05d}"


class Bank:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.root = fsu.url_to_fs(self.url, self.storage_options)

    def _p(self, *parts: str) -> str:
        return fsu.join(self.root, *parts)

    def is_local(self) -> bool:
        return fsu.is_local(self.fs)

    # -- description --------------------------------------------------------------------------
    def exists(self) -> bool:
        return fsu.exists(self.fs, self._p(BANK_FILE))

    def meta(self) -> dict:
        if not self.exists():
            raise StoreError(f"no bank at {self.url}: run `bergson validate` with this --bank first")
        return fsu.read_json(self.fs, self._p(BANK_FILE))

    def check(self, meta: dict, masks: np.ndarray, overwrite: bool = False) -> str:
        """"new" (no bank yet), "same" (made with this recipe) or "replace" (another recipe, and
        overwrite is asked for); anything else is refused with a StoreError. Writes nothing."""
        if not self.exists():
            return "new"
        old = self.meta()
        if old.get("recipe_hash") == meta["recipe_hash"]:
            if not np.array_equal(self.masks(), masks):
                raise StoreError(f"bank {self.url} holds other subsets for the same recipe: it is corrupt; "
                                 "delete it or pass --overwrite")
            return "same"
        if not overwrite:
            changed = sorted(k for k in set(old.get("recipe", {})) | set(meta["recipe"])
                             if old.get("recipe", {}).get(k) != meta["recipe"].get(k))
            more = f"; changed: {', '.join(changed)}" if changed else " (the init, corpus or queries changed)"
            raise StoreError(f"bank {self.url} was made with another recipe{more}: pass --overwrite to replace "
                             "it, or use another --bank (paths are compared as given)")
        return "replace"

    def ensure(self, meta: dict, masks: np.ndarray, overwrite: bool = False) -> None:
        """Create the bank, or check that the existing one was made with the same recipe."""
        state = self.check(meta, masks, overwrite)
        if state == "same":
            return
        if state == "replace":
            self.fs.rm(self.root, recursive=True)
        from safetensors.numpy import save

        fsu.write_bytes(self.fs, self._p(MASKS_FILE), save({"masks": masks.astype(np.uint8)}))
        fsu.write_json(self.fs, self._p(BANK_FILE), meta)

    def masks(self) -> np.ndarray:
        from safetensors.numpy import load

        with self.fs.open(self._p(MASKS_FILE), "rb") as f:
            return load(f.read())["masks"].astype(bool)

    # -- runs -----------------------------------------------------------------------------------
    def run_manifest_path(self, run: str) -> str:
        return self._p(RUNS_DIR, f"{run}.json")

    def has_run(self, run: str) -> bool:
        return fsu.exists(self.fs, self.run_manifest_path(run))

    def write_run(self, run: str, losses: np.ndarray, info: dict) -> dict:
        """Write the losses, then the manifest (last)."""
        from safetensors.numpy import save

        data = save({"losses": np.asarray(losses, dtype=np.float64)})
        fsu.write_bytes(self.fs, self._p(RUNS_DIR, f"{run}.safetensors"), data)
        manifest = {"run": run, "queries": int(len(losses)), "sha256": hashlib.sha256(data).hexdigest(),
                    "code_version": CODE_VERSION, **info}
        fsu.write_json(self.fs, self.run_manifest_path(run), manifest)
        return manifest

    def read_run(self, run: str) -> tuple[np.ndarray, dict]:
        from safetensors.numpy import load

        if not self.has_run(run):
            raise StoreError(f"bank {self.url} has no finished run {run}: rerun `bergson validate`")
        manifest = fsu.read_json(self.fs, self.run_manifest_path(run))
        with self.fs.open(self._p(RUNS_DIR, f"{run}.safetensors"), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise StoreError(f"bank run {run} in {self.url} fails its checksum: delete runs/{run}.json and rerun")
        return load(data)["losses"], manifest

    def delete_run(self, run: str) -> None:
        fsu.remove(self.fs, self.run_manifest_path(run))

    def missing(self, runs: list[str]) -> list[str]:
        return [r for r in runs if not self.has_run(r)]

    def losses(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(full-model losses [Q], subset losses [S, Q], subset manifests); every run must be finished."""
        meta = self.meta()
        runs = [subset_run(i) for i in range(meta["num_subsets"])]
        missing = self.missing([FULL_RUN, *runs])
        if missing:
            raise StoreError(f"bank {self.url} lacks {len(missing)} run(s) ({', '.join(missing[:3])}...): "
                             "rerun `bergson validate` to finish them")
        full, _ = self.read_run(FULL_RUN)
        rows, manifests = [], []
        for r in runs:
            losses, man = self.read_run(r)
            rows.append(losses)
            manifests.append(man)
        return full, np.stack(rows), manifests


def cost(manifests: list[dict]) -> dict:
    """The cost of a bank: retrainings x seconds per retraining (as measured when each ran)."""
    secs = [float(m.get("seconds", 0.0)) for m in manifests]
    return {"retrainings": len(secs), "seconds_per_retraining": float(np.mean(secs)) if secs else 0.0,
            "retraining_seconds": float(np.sum(secs))}
