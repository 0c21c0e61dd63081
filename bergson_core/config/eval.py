"""Options of the trainer and of the evaluation commands (`validate`, `recall`, `benchmark`).

Same style as config.py: small flat mixins composed into one config per command, so a CLI flag, a
YAML key and a flow parameter are the same name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import CODE_VERSION, QUERY_FIELDS, DataOptions, ModelOptions, QueryOptions, _Options, spec_hash


class TrainOptions(_Options):
    """A training recipe: everything that decides the trained weights besides the init and the data."""

    optimizer: Literal["adamw", "sgd", "muon"] = Field(
        "adamw", description="Optimizer: AdamW as in torch, SGD, or Muon (Newton-Schulz-orthogonalised Nesterov "
        "momentum for the hidden weight matrices, with --momentum, e.g. 0.95; AdamW for every other parameter).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled (AdamW) or L2 (SGD) weight decay.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD or Muon momentum (0 = plain SGD).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to --lr over this many optimizer steps.")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="After warmup: linear decay to 0 at the last step, or constant."
    )
    epochs: int = Field(1, gt=0, description="Passes over the training documents.")
    batch_size: int = Field(8, gt=0, description="Documents per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (gradient accumulation).")
    train_seed: int = Field(0, description="Seed of the data order (a fresh permutation per epoch).")
    train_loss: Literal["sum", "mean"] = Field(
        "mean", description="Per-document loss: sum or mean of its tokens' cross-entropy. A step's loss is "
        "sum(weight * document loss) / (batch size * grad accum)."
    )
    checkpoint_every: int = Field(0, ge=0, description="Save a checkpoint every N optimizer steps (0 = only the last).")


class SubsetOptions(_Options):
    subset_kind: Literal["random", "leave-out"] = Field(
        "random", description="random: independent random subsets keeping --subset-fraction of the documents; "
        "leave-out: non-overlapping chunks of --leave-out-percent percent of the corpus, each left out once."
    )
    num_subsets: int = Field(32, gt=1, description="Random subsets to retrain on (random kind).")
    subset_fraction: float = Field(0.5, gt=0, lt=1, description="Fraction of documents kept per random subset.")
    leave_out_percent: float = Field(
        10.0, gt=0, le=50, description="Size of each left-out chunk, in percent of the corpus."
    )
    subset_seed: int = Field(0, description="Seed of the subset draw.")
    subset_mode: Literal["weights", "drop"] = Field(
        "weights", description="weights: left-out documents get loss weight 0 and the data order and step count "
        "stay those of the full run; drop: train on the kept documents only (a new order, fewer steps)."
    )


class BankOptions(QueryOptions, SubsetOptions, TrainOptions, DataOptions, ModelOptions):
    """The recipe whose retrained models' query losses make up a bank. --model is the shared init."""

    bank: str = Field(..., description="Folder of the bank of retrained query losses (local path or s3://).")
    overwrite: bool = Field(False, description="Delete a bank made with a different recipe first.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage options for s3:// and other remote URLs."
    )

    def recipe(self) -> dict[str, Any]:
        """Everything that changes the retrained losses (device aside); its hash guards the bank."""
        keys = [k for k in ModelOptions.model_fields if k != "device"]
        keys += list(DataOptions.model_fields) + list(TrainOptions.model_fields)
        keys += list(SubsetOptions.model_fields) + list(QUERY_FIELDS)
        out = {k: getattr(self, k) for k in keys}
        out["code_version"] = CODE_VERSION
        return out

    def recipe_hash(self) -> str:
        return spec_hash(self.recipe())


class ScoreFileOptions(_Options):
    scores: list[str] = Field(
        default_factory=list, description="Score files: topk.parquet of `bergson score` (with --top-k at least "
        "the corpus size for LDS) or any Parquet with query_index, doc_index, score; or their folders."
    )
    names: list[str] = Field(default_factory=list, description="A method name per score file (default: its folder).")
    output: str | None = Field(None, description="Report folder (validate: BANK/report; recall: next to the "
                               "first score file).")

    @model_validator(mode="after")
    def _names_match(self):
        if self.names and len(self.names) != len(self.scores):
            raise ValueError(f"give one --names entry per score file ({len(self.scores)}), not {len(self.names)}")
        return self


class ValidateConfig(ScoreFileOptions, BankOptions):
    """`bergson validate`: LDS of score files against a bank of retrained models."""


class RecallConfig(ScoreFileOptions):
    """`bergson recall`: MRR and recall@k of known supporting documents in each query's ranking."""

    queries: str = Field(..., description="Query file with a column listing each query's supporting document ids.")
    support_column: str = Field("support_ids", description="Query column with the supporting document ids.")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="Cut-offs k of recall@k.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options.")
