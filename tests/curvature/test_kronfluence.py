"""Identity, diagonal, KFAC and EK-FAC pairwise influence scores equal kronfluence's (an independent
reference) on tiny random GPT-2 and Llama models, float64, with bias, in kronfluence's
conventions: summed loss, empirical Fisher, absolute damping, score = g_q^T P^-1 g_d with no 1/N.

kronfluence tracks nn.Linear only, so its copy of GPT-2 has each Conv1D converted to an equivalent
nn.Linear (weight transposed); our side runs on the original Conv1D model, which also checks the
out x in orientation of Conv1D gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from torch import nn

from bergson_core import curvature as C

from .tiny_setup import make_setup, rel_err

DAMPING = 1e-3
STRATEGIES = ("identity", "diagonal", "kfac", "ekfac")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
F64 = torch.float64


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for mod in list(model.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                i, o = child.weight.shape
                lin = nn.Linear(i, o, dtype=child.weight.dtype)
                lin.weight.data = child.weight.data.T.clone()
                lin.bias.data = child.bias.data.clone()
                setattr(mod, cname, lin)
    return model


class LMTask(Task):
    def __init__(self, names: list[str]):
        self.names = names

    def compute_train_loss(self, batch, model, sample=False):
        assert not sample, "the test uses the empirical Fisher"
        # the reference's own loss (not the project's document_losses): summed next-token cross-entropy
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model)

    def get_influence_tracked_modules(self):
        return self.names

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


def as_dataset(docs, width):
    out = []
    for d in docs:
        n = len(d.input_ids)
        ids, mask, lab = torch.zeros(width, dtype=torch.long), torch.zeros(width, dtype=torch.long), torch.full((width,), -100)
        ids[:n], mask[:n], lab[:n] = torch.tensor(d.input_ids), 1, torch.tensor(d.labels)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": lab})
    return out


def kronfluence_scores(setup, tmp_path) -> dict[str, np.ndarray]:
    model = conv1d_to_linear(setup.loaded.model)
    task = LMTask([m.name for m in setup.modules])
    model = prepare_model(model, task)
    width = max(len(d.input_ids) for d in setup.train + setup.query)
    train, query = as_dataset(setup.train, width), as_dataset(setup.query, width)
    analyzer = Analyzer("ref", model, task, cpu=True, output_dir=str(tmp_path), disable_tqdm=True)
    out = {}
    for strategy in STRATEGIES:
        fargs = FactorArguments(strategy=strategy, use_empirical_fisher=True, amp_dtype=None,
                                activation_covariance_dtype=F64, gradient_covariance_dtype=F64,
                                per_sample_gradient_dtype=F64, lambda_dtype=F64, eigendecomposition_dtype=F64)
        analyzer.fit_all_factors(strategy, train, per_device_batch_size=8, factor_args=fargs,
                                 overwrite_output_dir=True)
        sargs = ScoreArguments(damping_factor=DAMPING, amp_dtype=None, per_sample_gradient_dtype=F64,
                               precondition_dtype=F64, score_dtype=F64)
        analyzer.compute_pairwise_scores(f"s-{strategy}", strategy, query, train, per_device_query_batch_size=4,
                                         per_device_train_batch_size=8, score_args=sargs, overwrite_output_dir=True)
        out[strategy] = analyzer.load_pairwise_scores(f"s-{strategy}")["all_modules"].numpy()
    return out


def our_scores(setup) -> dict[str, np.ndarray]:
    gd, gq = setup.grads(setup.train), setup.grads(setup.query)
    kfac = C.fit_preconditioner("kfac", {"kfac": C.kfac_partial_stats(setup.loaded, setup.modules, setup.train, setup.space)})
    lam = C.lambda_partial_stats(setup.loaded, setup.modules, setup.train, kfac)
    ekfac = C.fit_preconditioner("ekfac", {"ekfac-lambda": lam}, base=kfac)
    identity = C.fit_preconditioner("identity", {}, layout=(setup.space, setup.blocks))
    diag = C.diagonal_partial_stats(setup.loaded, setup.modules, setup.train, setup.space)
    diagonal = C.fit_preconditioner("diagonal", {"diagonal": diag})
    opts = C.ApplyOptions(damping=DAMPING, damping_mode="absolute")
    return {name: C.apply(fit, gq, opts) @ gd.T for name, fit in
            (("identity", identity), ("diagonal", diagonal), ("kfac", kfac), ("ekfac", ekfac))}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_scores_match_kronfluence(arch, tmp_path):
    setup = make_setup(arch, n_train=16, n_query=4)
    assert any(m.has_bias for m in setup.modules)
    if arch == "gpt2":
        assert all(m.transposed for m in setup.modules)  # Conv1D on our side
    ref = kronfluence_scores(setup, tmp_path)
    ours = our_scores(setup)
    for strategy in STRATEGIES:
        assert ref[strategy].shape == (len(setup.query), len(setup.train))
        assert np.abs(ref[strategy]).max() > 0
        assert rel_err(ours[strategy], ref[strategy]) <= 1e-11, strategy  # measured: 3e-16 to 8e-14
    # the preconditioners really differ from each other, so the comparison is not vacuous
    assert rel_err(ours["kfac"], ours["ekfac"]) > 1e-2
    assert rel_err(ours["identity"], ours["ekfac"]) > 1e-2
