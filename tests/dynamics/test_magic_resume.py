"""MAGIC runs killed in their forward or backward phase resume from the saved progress, end with
metagradients bit-identical to a run that never stopped, and redo fewer steps than a fresh run."""

from __future__ import annotations

import pytest
import torch

from bergson_core.config.eval import TrainOptions
from bergson_core.methods.magic.metagrad import metagradients
from bergson_core.methods.magic.state import MANIFEST, StateStore
from tests.eval import helpers

TEXTS = helpers.TEXTS[:6]
QUERIES = ["the cat sat in the park", "a dog sails across the sea"]
# 18 steps: sqrt segments of 5 (a short last one), resume points every 5 steps
OPTS = TrainOptions(optimizer="adamw", lr=0.01, weight_decay=0.1, eps=1e-6, epochs=6, batch_size=2,
                    train_loss="mean", schedule="linear", warmup_steps=1)


class Killed(Exception):
    pass


def kill_at(phase: str, n: int):
    """on_step hook raising after the n-th step of `phase`, as a crash would."""
    seen = {"forward": 0, "backward": 0}

    def hook(p: str, step: int) -> None:
        seen[p] += 1
        if p == phase and seen[p] == n:
            raise Killed(f"{p} step {step}")

    return hook


@pytest.fixture(scope="module")
def setup():
    tok = helpers.tokenizer(QUERIES)
    return {"model": helpers.model(tok, dtype=torch.float64), "docs": helpers.docs(tok, TEXTS),
            "queries": helpers.docs(tok, QUERIES)}


def run(setup, schedule, **kw):
    return metagradients(setup["model"], setup["docs"], setup["queries"], OPTS, schedule=schedule, **kw)


@pytest.mark.parametrize("schedule,phase,n", [
    ("sqrt", "forward", 12),   # killed after step 12: states 5 and 10 saved
    ("sqrt", "backward", 27),  # killed in the second query's pass: the first one's result is saved
    ("every", "forward", 7),
    ("every", "backward", 9),
    ("log", "backward", 30),
])
def test_killed_run_resumes_bit_identical_with_fewer_steps(setup, tmp_path, schedule, phase, n):
    fresh, s_fresh = run(setup, schedule)
    store = StateStore(str(tmp_path / "state"), "recipe")
    with pytest.raises(Killed):
        run(setup, schedule, store=store, on_step=kill_at(phase, n))
    assert (tmp_path / "state" / MANIFEST).exists()
    resumed, s_res = run(setup, schedule, store=StateStore(str(tmp_path / "state"), "recipe"))
    assert torch.equal(resumed, fresh)
    if phase == "forward":
        assert s_res.forward_steps < s_fresh.forward_steps
        assert s_res.backward_steps == s_fresh.backward_steps
    else:
        assert s_res.backward_steps < s_fresh.backward_steps
        assert s_res.forward_steps < s_fresh.forward_steps  # the whole forward phase was loaded
    assert s_res.peak_states <= s_fresh.peak_states  # resuming holds no more than the schedule holds


def test_killed_batched_run_resumes_bit_identical(setup, tmp_path):
    fresh, s_fresh = run(setup, "sqrt", query_batch=2)
    store = StateStore(str(tmp_path), "recipe")
    with pytest.raises(Killed):
        run(setup, "sqrt", query_batch=2, store=store, on_step=kill_at("backward", 11))
    resumed, s_res = run(setup, "sqrt", query_batch=2, store=StateStore(str(tmp_path), "recipe"))
    assert torch.equal(resumed, fresh) and s_res.backward_steps < s_fresh.backward_steps


class CutStore(StateStore):
    """A store whose process dies after writing a file but before the manifest names it."""

    def __init__(self, *a, commits: int):
        super().__init__(*a)
        self.left = commits

    def _commit(self):
        if self.left == 0:
            raise Killed("between file and manifest")
        self.left -= 1
        super()._commit()


def test_files_the_manifest_does_not_name_are_never_read(setup, tmp_path):
    fresh, s_fresh = run(setup, "sqrt")
    with pytest.raises(Killed):  # commits: states 5, 10, 15, 18, then backward 15 is written unnamed
        run(setup, "sqrt", store=CutStore(str(tmp_path), "recipe", commits=4))
    assert (tmp_path / "back-000000-000015.safetensors").exists()
    (tmp_path / "back-000000-000015.safetensors").write_bytes(b"half a file")
    (tmp_path / "state-000017.safetensors").write_bytes(b"half a file")
    resumed, s_res = run(setup, "sqrt", store=StateStore(str(tmp_path), "recipe"))
    assert torch.equal(resumed, fresh)
    assert s_res.backward_steps == s_fresh.backward_steps  # the backward pass started over


def test_another_recipe_never_reuses_the_state(setup, tmp_path):
    fresh, s_fresh = run(setup, "sqrt")
    with pytest.raises(Killed):
        run(setup, "sqrt", store=StateStore(str(tmp_path), "recipe"), on_step=kill_at("backward", 5))
    # another key (the caller's recipe), and other weights (the run's own facts), both start over
    other, s_other = run(setup, "sqrt", store=StateStore(str(tmp_path), "another recipe"))
    assert torch.equal(other, fresh) and s_other.forward_steps == s_fresh.forward_steps
    with pytest.raises(Killed):
        run(setup, "sqrt", store=StateStore(str(tmp_path), "recipe"), on_step=kill_at("backward", 5))
    w = torch.ones(len(TEXTS), dtype=torch.float64)
    w[0] = 0.5
    _, s_w = run(setup, "sqrt", weights=w, store=StateStore(str(tmp_path), "recipe"))
    assert s_w.forward_steps == s_fresh.forward_steps and s_w.backward_steps == s_fresh.backward_steps


def test_killed_part_resumes_bit_identical_and_removes_its_state(tmp_path, facts):
    import json

    from safetensors.torch import load_file

    from bergson_core.methods.magic.run import run_part

    whole = run_part(config(facts, output=str(tmp_path / "whole")), 0, 4)
    cfg = config(facts, output=str(tmp_path / "killed"))
    with pytest.raises(Killed):
        run_part(cfg, 0, 4, on_step=kill_at("backward", whole["steps"] - 1))
    state = tmp_path / "killed" / "parts" / "000000-000004.state"
    assert json.loads((state / MANIFEST).read_text())["backward"] is not None
    resumed = run_part(cfg, 0, 4)
    assert not resumed["reused"] and not state.exists()
    assert torch.equal(load_file(resumed["path"])["metagradients"], load_file(whole["path"])["metagradients"])
    assert resumed["backward_steps"] < whole["backward_steps"] and resumed["forward_steps"] < whole["forward_steps"]
    # the state is keyed by the recipe: another learning rate in the same folder starts over
    with pytest.raises(Killed):
        run_part(config(facts, output=str(tmp_path / "again")), 0, 4, on_step=kill_at("backward", 2))
    other = run_part(config(facts, output=str(tmp_path / "again"), lr=1e-3), 0, 4)
    assert (other["forward_steps"], other["backward_steps"]) == (whole["forward_steps"], whole["backward_steps"])


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    from tests.dynamics.test_magic_flow import facts as make

    return make.__wrapped__(tmp_path_factory)


def config(facts, output: str, **recipe):
    from tests.dynamics.test_magic_flow import config as make

    return make(facts, output=output, checkpointing="sqrt", query_batch=2).model_copy(update=recipe)
