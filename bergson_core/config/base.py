"""The one configuration model. The same pydantic classes give the CLI flags, the YAML config file,
the Prefect flow parameters and the dashboard form, so an option is declared exactly once here.

Options are grouped in small mixins (model, data, gradient, run, the query set) and composed into
one flat config per command; flat names keep CLI flags, YAML keys and form fields identical.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_serializer

from ..version import __version__

CODE_VERSION = __version__  # bergson_core/version.py: bump when stored gradients would change for the same spec


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelOptions(_Options):
    model: str = Field(
        "",
        description="Causal LM: a local Hugging Face folder, a hub id, or a .gguf file path. "
        "For `score` it defaults to the model the index was built with.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(
        None, description="GGUF file name inside --model's folder or hub repo (for GGUF models)."
    )
    dtype: Literal["auto", "float32", "float64", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    device: str = Field("auto", description="Torch device; auto = cuda when present, else cpu.")


class DataOptions(_Options):
    dataset: str = Field(
        "",
        description="Corpus: a `datasets` folder saved to disk, a JSONL/Parquet/CSV file at any "
        "fsspec URL (local or s3://), or a hub dataset id.",
    )
    split: str = Field("train", description="Split to use for hub ids and DatasetDict folders.")
    text_column: str = Field("text", description="Column holding each document's text.")
    prompt_column: str | None = Field(
        None, description="Prompt column; with --completion-column only completion tokens carry loss."
    )
    completion_column: str | None = Field(None, description="Completion column (see --prompt-column).")
    id_column: str | None = Field(None, description="Column with document ids (default: row number).")
    max_length: int = Field(512, gt=1, description="Truncate documents to this many tokens.")


class GradientOptions(_Options):
    projection_dim: int = Field(
        16, ge=0, description="Per-module projection size p (p*p numbers per module); 0 keeps full gradients."
    )
    projection_type: Literal["rademacher", "normal"] = Field(
        "rademacher", description="Entries of the random projection matrices."
    )
    projection_seed: int = Field(0, description="Seed of the projection; queries and corpus must agree.")
    include: list[str] = Field(
        default_factory=list, description="Glob(s) of module names to track (default: all body linears)."
    )
    exclude: list[str] = Field(default_factory=list, description="Glob(s) of module names to skip.")
    include_bias: bool = Field(False, description="Track bias gradients as an extra input column of ones.")
    loss_reduction: Literal["sum", "mean"] = Field(
        "sum", description="Per-document loss: sum or mean of next-token cross-entropy."
    )
    grad_dtype: Literal["float16", "float32"] = Field("float16", description="Stored gradient dtype.")
    optimizer_state: str | None = Field(
        None, description="Optimizer state whose second moments normalise every gradient (TrackStar): a "
        "Hugging Face Trainer checkpoint folder, an optimizer .pt state_dict or a .safetensors file.",
    )
    normalizer: Literal["auto", "adam", "adafactor"] = Field(
        "auto", description="How --optimizer-state normalises: Adam (elementwise) or Adafactor (factored); "
        "auto = from the state's keys.",
    )


class AdapterOptions(_Options):
    """A PEFT adapter on the model: gradients are taken w.r.t. its LoRA factors only."""

    adapter: str | None = Field(
        None, description="PEFT adapter folder (save_pretrained) loaded on --model; gradients are taken with "
        "respect to its LoRA A and B factors only, each its own module.",
    )
    new_lora: str | None = Field(
        None, description="Attribute through a freshly initialised LoRA adapter, e.g. "
        "r=8,alpha=16,target_modules=q_proj|v_proj (fixed seed; peft's init, so B = 0 and A has zero gradients).",
    )


class ObjectiveOptions(_Options):
    """What carries loss, and which loss: chat transcripts, label smoothing, reward weighting, preference pairs."""

    conversation_column: str | None = Field(
        None, description="Column of chat transcripts (lists of {role, content} messages), rendered with the "
        "tokenizer's chat template; only the assistant's tokens carry loss.",
    )
    loss: Literal["ce", "kl"] = Field(
        "ce", description="Per-document loss: ce = next-token cross-entropy; kl = KL divergence of the adapter "
        "model's next-token distributions from the base model's (adapter disabled), over the loss tokens "
        "(needs --adapter; a fresh --new-lora equals the base, so its KL gradients are zero).",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Label smoothing of the next-token cross-entropy (as torch's).")
    reward_column: str | None = Field(
        None, description="Reward column: each document's loss is weighted by its advantage, the reward minus "
        "the mean reward of the documents sharing its --prompt-column (the whole corpus without one): a "
        "policy-gradient loss.",
    )
    rejected_column: str | None = Field(
        None, description="Rejected-completion column of preference pairs (with --prompt-column and "
        "--completion-column, the chosen one): each pair's loss is -log sigmoid of the log-odds difference of "
        "the two completions' mean token probabilities (ORPO's odds ratio); its row is the pair's gradient.",
    )


# Options added after indexes existed: left out of a spec while at their default, so older indexes keep their hash
OPTIONAL_SPEC_FIELDS = (*AdapterOptions.model_fields, *ObjectiveOptions.model_fields)


class RunOptions(_Options):
    batch_tokens: int | None = Field(
        None, gt=0, description="Token budget per batch (padded tokens of length-sorted documents); "
        "default: as many as keep one batch's activations within 256 MiB on CPU (a quarter of the GPU's "
        "memory on CUDA), measured on the model, at most 8192.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage options for s3:// and other remote URLs. Keep "
        "credentials out of them: s3fs reads the environment and AWS profiles ({\"profile\": \"name\"}); a value "
        "\"prefect-secret:NAME\" is read from that Prefect Secret block when used. A literal key or secret is "
        "used but never stored (Prefect parameters, artifacts, logs and index.json show it redacted).",
    )
    progress: bool = Field(True, description="Show progress bars in the terminal.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations during backward, so long documents fit in "
        "memory (same gradients, slower).",
    )
    device_map: str | None = Field(
        None, description="Spread a model larger than one device with Accelerate: auto, balanced, sequential, or "
        "a JSON {module: device} map (devices: cuda:N, cpu, disk). Same gradients; one replica.",
    )
    offload_folder: str | None = Field(None, description="Folder for the weights --device-map puts on disk.")

    @field_serializer("storage_options")
    def _hide_secrets(self, value: dict[str, Any], info):
        """JSON forms of a config (Prefect's flow-run parameters, cache-key hashes, artifacts) never
        carry credentials; the object itself keeps them for the filesystem calls of this process."""
        from ..secrets import redact

        return redact(value) if info.mode_is_json() else value


class PlanOptions(_Options):
    """What `bergson plan` (and `bergson build --dry-run`) needs besides the build's own options."""

    dry_run: bool = Field(False, description="Print what the build would compute and cost (as `bergson plan` "
                          "does) and stop before any gradient is computed.")
    price_per_hour: float | None = Field(None, ge=0, description="Price of an hour of the device: the plan "
                                         "prints the cost of the build.")
    plan_sample: int = Field(20000, gt=0, description="The plan tokenises every document up to this many; past "
                             "it, whole shards picked at random and scales their token count up.")
    calibration_documents: int = Field(16, gt=0, description="Documents of the plan's calibration batch (timed "
                                       "on the chosen device).")


# -- the query set: declared once, mixed into every config that reads queries -----------------------
# The blocks differ only in what their help says an unset query column falls back to (the index's
# columns, or the command's own --text-column ...) and in whether --queries is required; the fields,
# their defaults and their flags are the same everywhere, and so is the fallback rule (query_columns).
QUERY_FIELDS = ("queries", "query_text_column", "query_prompt_column", "query_completion_column", "query_split")
_QUERIES_HELP = "Query file or dataset (same formats as --dataset)."


class QuerySet(_Options):
    """Base of the query blocks: the fallback rule and the hand-over of a query set to another config."""

    def query_columns(self, data: Any = None) -> tuple[str, str | None, str | None]:
        """(text, prompt, completion) columns of the queries: each query column left unset is `data`'s
        (the index's build options), by default this config's own --text-column / --prompt-column /
        --completion-column."""
        data = self if data is None else data
        return (self.query_text_column or data.text_column,
                self.query_prompt_column or data.prompt_column,
                self.query_completion_column or data.completion_column)

    def query_fields(self, *, queries: bool = True) -> dict[str, Any]:
        """The query options as given (unset columns stay unset), to build another config from."""
        return {k: getattr(self, k) for k in QUERY_FIELDS if queries or k != "queries"}


def _block(name: str, doc: str, fallback: Callable[[str], str], *, required: bool = True,
           completion_note: str = "") -> type[QuerySet]:
    """One query block: every field declared here, for all blocks."""

    def column(kind: str, note: str = "") -> Any:
        return (str | None, Field(None, description=f"Query {kind} column (default: {fallback(kind)}){note}."))

    queries = (str, Field(..., description=_QUERIES_HELP)) if required else (
        str | None, Field(None, description=_QUERIES_HELP))
    return create_model(
        name,
        __base__=QuerySet,
        __doc__=doc,
        __module__=__name__,
        queries=queries,
        query_text_column=column("text"),
        query_prompt_column=column("prompt"),
        query_completion_column=column("completion", completion_note),
        query_split=(str, Field("train", description="Split for hub ids and DatasetDict folders of queries.")),
    )


IndexQueries = _block("IndexQueries", "A query set scored against an index: unset columns are the index's.",
                      lambda kind: "the index's")
OptionalIndexQueries = _block("OptionalIndexQueries", "IndexQueries with --queries optional (`bergson fit`).",
                              lambda kind: "the index's", required=False)
CheckpointQueries = _block("CheckpointQueries", "A query set scored against one index per checkpoint (TracIn): "
                           "unset columns are the indexes'.", lambda kind: "the indexes'")
QueryOptions = _block("QueryOptions", "A query set of a training recipe (validate, MAGIC, SOURCE): unset columns are "
                      "the command's own --text-column, --prompt-column, --completion-column.",
                      lambda kind: f"--{kind}-column", completion_note="; only its tokens carry loss")


class BuildConfig(PlanOptions, RunOptions, ObjectiveOptions, GradientOptions, DataOptions, AdapterOptions, ModelOptions):
    """`bergson build`: compute and store per-document gradients of a corpus."""

    index: str = Field(..., description="Index folder: a local path or an s3:// URL.")
    shard_size: int = Field(1000, gt=0, description="Documents per gradient shard (one task each).")
    overwrite: bool = Field(False, description="Delete an existing index with a different spec first.")
    devices: str = Field(
        "auto", description="Model replicas that compute shards at once: auto (every visible CUDA device, "
        "or on CPU one replica per core, at most 4, sharing the weights), cuda:0,cuda:1, or cpu:N.",
    )
    verify: bool | None = Field(
        None, description="Checksum the shards a rerun skips (a corrupt one is recomputed); sizes are always "
        "checked. Default: on for local indexes, off for remote ones (a checksum downloads every shard).",
    )
    append: bool = Field(
        False, description="Add --dataset's new documents to the existing index as new shards (a new file, or the "
        "indexed file grown at its end); existing shards and fitted statistics' partial sums are kept.",
    )
    fan_out: Literal["tasks", "workers"] = Field(
        "tasks", description="tasks: every shard is a task of this one run (threads, Dask or Ray); workers: the "
        "missing shards are split into --blocks child runs of the build-shards deployment, which the work pool's "
        "workers take in parallel (needs a Prefect server and `bergson deploy`).",
    )
    blocks: int = Field(8, gt=0, description="With --fan-out workers: child runs the missing shards are split into.")
    block_retries: int = Field(
        2, ge=0, description="With --fan-out workers: how often a failed or crashed block is started again.",
    )

    def spec(self) -> dict[str, Any]:
        """Everything that changes stored bytes; its hash names and guards the index."""
        keys = list(ModelOptions.model_fields) + list(DataOptions.model_fields)
        keys += list(GradientOptions.model_fields) + ["shard_size"]
        spec = {k: getattr(self, k) for k in keys if k != "device"}
        spec.update({k: getattr(self, k) for k in OPTIONAL_SPEC_FIELDS
                     if getattr(self, k) != type(self).model_fields[k].default})
        if self.optimizer_state is None:  # absent, so indexes built before these options keep their hash
            del spec["optimizer_state"], spec["normalizer"]
        else:  # the bytes of the state, not its path, decide the stored gradients
            from ..gradients.normalizers import state_fingerprint

            spec["optimizer_state_sha256"] = state_fingerprint(self.optimizer_state)
        spec["code_version"] = CODE_VERSION
        return spec

    def spec_hash(self) -> str:
        return spec_hash(self.spec())


class ScoreConfig(IndexQueries, RunOptions, ModelOptions):
    """`bergson score`: score queries against a built index and keep the top documents."""

    index: str = Field(..., description="Index folder built by `bergson build` (local path or s3://).")
    top_k: int = Field(10, gt=0, description="Documents kept per query.")
    show: int = Field(5, ge=0, description="Documents shown per query in the terminal and the dashboard table "
                      "(topk.parquet holds all top-k).")
    metric: Literal["inner", "cosine"] = Field("cosine", description="Score: inner product or cosine.")
    aggregate: Literal["individual", "mean", "max"] = Field(
        "individual", description="Score each query, or the mean / max over all queries as one."
    )
    output: str | None = Field(None, description="Output folder (default: INDEX/scores/<queries-name>).")
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")
    allow_model_mismatch: bool = Field(
        False, description="Score even when the query model's weights differ from the index's model (e.g. a "
        "checkpoint of the same run); the output says so. Without it such a score is refused.",
    )
    preconditioner: str | None = Field(
        None, description="Name of a preconditioner fitted on this index (`bergson fit`), applied with the "
        "damping and power it was fitted with: power -1 to the queries, any other power (-0.5) to both sides.",
    )


def spec_hash(spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
