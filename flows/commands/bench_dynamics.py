"""Benchmark rows of the training-dynamics methods (TracIn over checkpoints, SOURCE, MAGIC), listed
in `bergson benchmark`'s explicit registry (benchmark.methods()). Not a command (no row in COMMANDS).

Every row reads the bank's recipe (bank.json), so it attributes exactly the run the bank retrains:
TracIn and SOURCE retrain it once with checkpoints (bit-identical weights: the trainer is
deterministic) and build one index per checkpoint; MAGIC differentiates the whole run.
"""

from __future__ import annotations

import os
import shutil

from .benchmark import Bench, method

TRACIN_CHECKPOINTS = 4
SOURCE_CHECKPOINTS = 6
SOURCE_SEGMENTS = 3


def _recipe(bench: Bench) -> dict:
    from bergson_core.eval.bank import Bank

    return Bank(os.path.join(bench.workdir, "bank")).meta()["recipe"]


def _checkpointed_run(bench: Bench, folder: str, checkpoints: int) -> list[str]:
    """Retrain the bank's recipe with `checkpoints` evenly spaced checkpoints (bit-identical weights to
    the bank's full run: the trainer is deterministic); returns the checkpoint folders in order."""
    import copy
    import math

    from bergson_core.config import ModelOptions
    from bergson_core.config.eval import TrainOptions
    from bergson_core.data.corpus import tokenize_rows
    from bergson_core.index.build import open_corpus
    from bergson_core.model.loading import load_model
    from bergson_core.train.trainer import total_steps, train

    recipe = _recipe(bench)
    corpus = open_corpus(recipe["dataset"], recipe["split"], {})
    loaded = load_model(ModelOptions(model=recipe["model"], dtype="float32", device="cpu"))
    docs = tokenize_rows(corpus, 0, len(corpus), loaded.tokenizer, recipe["max_length"], recipe["text_column"],
                         recipe["prompt_column"], recipe["completion_column"], recipe["id_column"])
    opts = TrainOptions(**{k: recipe[k] for k in TrainOptions.model_fields})
    steps = total_steps(len(docs), opts)
    opts = opts.model_copy(update={"checkpoint_every": math.ceil(steps / checkpoints)})
    model = copy.deepcopy(loaded.model).requires_grad_(True)
    train(model, docs, opts, pad_id=getattr(loaded.tokenizer, "pad_token_id", None) or 0, checkpoint_dir=folder,
          tokenizer=loaded.tokenizer)
    names = sorted(os.listdir(folder), key=lambda n: int(n.split("-")[1]))
    return [os.path.join(folder, n) for n in names]


@method("TracIn (4 checkpoints)", "sum over 4 checkpoints of lr x projected gradient inner product "
        "(Pruthi et al. 2020)")
def _tracin(bench: Bench) -> str:
    from bergson_core.config import BuildConfig
    from bergson_core.config.dynamics import TracInConfig

    from ..tracin import tracin
    from . import launch

    root = os.path.join(bench.workdir, "tracin")
    shutil.rmtree(root, ignore_errors=True)
    indexes = []
    for checkpoint in _checkpointed_run(bench, os.path.join(root, "run"), TRACIN_CHECKPOINTS):
        index = os.path.join(root, "indexes", os.path.basename(checkpoint))
        launch("build", BuildConfig(index=index, model=os.path.join(checkpoint, "model"), dataset=bench.corpus,
                                       id_column="id", projection_dim=bench.projection_dim,
                                       loss_reduction="mean", grad_dtype="float32", progress=False))
        indexes.append(index)
    summary = tracin(TracInConfig(indexes=indexes, queries=bench.queries, query_prompt_column="prompt",
                                  query_completion_column="completion", output=os.path.join(root, "scores"),
                                  progress=False))
    return summary["output"]


@method(f"SOURCE ({SOURCE_CHECKPOINTS} checkpoints, {SOURCE_SEGMENTS} segments)",
        "approximate unrolling (Bae et al. 2024), Adam variant: per-segment EK-FAC on full gradients rescaled by "
        "the saved Adam state, the query carried back through the segments")
def _source(bench: Bench) -> str:
    from bergson_core.config.source import SourceConfig

    from ..source import source

    root = os.path.join(bench.workdir, "source")
    shutil.rmtree(root, ignore_errors=True)
    checkpoints = _checkpointed_run(bench, os.path.join(root, "run"), SOURCE_CHECKPOINTS)
    cfg = SourceConfig(checkpoints=checkpoints, segments=SOURCE_SEGMENTS, dataset=bench.corpus, id_column="id",
                       queries=bench.queries, query_prompt_column="prompt", query_completion_column="completion",
                       loss_reduction="mean", output=os.path.join(root, "out"), progress=False)
    return source(cfg)["output"]


@method("MAGIC (exact metagradients)", "d query loss / d document weight by reverse-mode through all "
        "AdamW steps, sqrt checkpointing (Ilyas & Engstrom et al. 2025); how large its metagradients grow on "
        "each recipe: benchmarks/dynamics.md")
def _magic(bench: Bench) -> str:
    from bergson_core.config.dynamics import MagicConfig

    from ..magic import magic

    recipe = _recipe(bench)
    out = os.path.join(bench.workdir, "magic")
    shutil.rmtree(out, ignore_errors=True)
    cfg = MagicConfig(**{k: v for k, v in recipe.items() if k in MagicConfig.model_fields},
                      output=out, checkpointing="sqrt", query_batch=64, device="cpu")
    return magic(cfg)["output"]
