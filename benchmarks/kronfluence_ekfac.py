"""kronfluence 1.0.1's EK-FAC influence as one whole process, for benchmarks/curvature.py.

    python benchmarks/kronfluence_ekfac.py MODEL CORPUS.jsonl QUERIES.jsonl OUT.npy [--batch 64]

Loads a Hugging Face causal LM folder and two JSONL files with a `text` column, fits EK-FAC on the
corpus (empirical Fisher, summed next-token loss per document, bias included) on the same modules
bergson tracks by default (every Linear / GPT-2 Conv1D of the transformer body, not the LM head
or the embeddings), computes the full [queries x documents] pairwise scores with damping 0.1 x the
mean eigenvalue (kronfluence's `damping_factor=None`), and saves them as OUT.npy. Nothing of
bergson is imported, so the process pays only kronfluence's own costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """kronfluence tracks nn.Linear only: replace GPT-2's Conv1D by the equivalent nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    for mod in list(model.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                i, o = child.weight.shape
                lin = nn.Linear(i, o, dtype=child.weight.dtype)
                lin.weight.data = child.weight.data.T.contiguous()
                lin.bias.data = child.bias.data.clone()
                setattr(mod, cname, lin)
    return model


def read_texts(path: str) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main() -> None:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("corpus")
    ap.add_argument("queries")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    head = model.get_output_embeddings()
    model = conv1d_to_linear(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]

    def dataset(texts):
        ids = [tok(t, truncation=True, max_length=args.max_length)["input_ids"] for t in texts]
        width = max(len(x) for x in ids)
        out = []
        for x in ids:
            n = len(x)
            i, m, lab = torch.zeros(width, dtype=torch.long), torch.zeros(width, dtype=torch.long), torch.full((width,), -100)
            i[:n], m[:n], lab[:n] = torch.tensor(x), 1, torch.tensor(x)
            out.append({"input_ids": i, "attention_mask": m, "labels": lab})
        return out

    class LM(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=-100, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    task = LM()
    train, queries = dataset(read_texts(args.corpus)), dataset(read_texts(args.queries))
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as tmp:
        an = Analyzer("bench", model, task, cpu=True, output_dir=tmp, disable_tqdm=True, disable_model_save=True)
        an.fit_all_factors("ekfac", train, per_device_batch_size=args.batch,
                           factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True))
        an.compute_pairwise_scores("s", "ekfac", queries, train, per_device_query_batch_size=len(queries),
                                   per_device_train_batch_size=args.batch, score_args=ScoreArguments(damping_factor=None))
        scores = an.load_pairwise_scores("s")["all_modules"].numpy()
    np.save(args.out, scores)
    print(json.dumps({"seconds_in_process": time.perf_counter() - t0, "shape": list(scores.shape),
                      "modules": len(names)}))


if __name__ == "__main__":
    main()
