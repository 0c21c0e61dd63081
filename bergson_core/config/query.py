"""`bergson query`: ask a built index which documents are behind one or more prompts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import ConfigError
from .base import ModelOptions, OptionalIndexQueries, RunOptions, ScoreConfig


class QueryConfig(OptionalIndexQueries, RunOptions, ModelOptions):
    """Prompts from --text, --queries or standard input (one per line), answered from the index by
    streaming its shards exactly, or from a FAISS index built over them once (--faiss)."""

    index: str = Field(..., description="Index folder built by `bergson build` (local path or s3://).")
    text: list[str] = Field(default_factory=list, description="Prompt(s) to ask about (repeatable; the whole "
                            "text carries loss). Without --text and --queries, prompts are read from standard input, "
                            "one per line.")
    top_k: int = Field(10, ge=0, description="Most helpful documents kept per prompt (highest scores).")
    bottom_k: int = Field(0, ge=0, description="Most harmful documents kept per prompt (lowest scores: "
                          "upweighting them raises the prompt's loss most).")
    show: int = Field(5, ge=0, description="Documents shown per prompt and side in the terminal.")
    metric: Literal["inner", "cosine"] = Field("cosine", description="Score: inner product or cosine.")
    preconditioner: str | None = Field(
        None, description="Name of a preconditioner fitted on this index (`bergson fit`), as in `bergson score`.")
    output: str | None = Field(None, description="Output folder of query.parquet (default: INDEX/queries/<name>, "
                               "name from the prompts' hash).")
    block_rows: int = Field(4096, gt=0, description="Corpus rows scored per block (bounds memory).")
    allow_model_mismatch: bool = Field(False, description="Answer even when the model's weights differ from the "
                                       "index's model; the output says so.")
    faiss: str | None = Field(
        None, description="Answer from an approximate FAISS index with this index-factory string (e.g. Flat, "
        "IVF256,Flat, IVF1024,PQ64); built over the shards once and kept in INDEX/faiss/.")
    nprobe: int = Field(16, gt=0, description="Inverted lists visited per search of an IVF FAISS index.")
    faiss_shards_per_task: int = Field(8, gt=0, description="Shards added to the FAISS index per build task.")
    faiss_train_rows: int = Field(65536, gt=0, description="Rows sampled evenly over the shards to train a FAISS "
                                  "index (IVF centroids, PQ codebooks).")
    per_token: bool = Field(False, description="Also split each top/bottom document's score over its tokens: "
                            "OUTPUT/per_token.parquet (query_index, doc_index, position, token, score).")

    def check(self) -> None:
        if self.top_k == 0 and self.bottom_k == 0:
            raise ConfigError("--top-k and --bottom-k are both 0: ask for at least one document")
        if self.text and self.queries:
            raise ConfigError("give prompts either with --text or with --queries, not both")
        if self.per_token and self.faiss:
            raise ConfigError("--per-token recomputes document gradients exactly: drop --faiss")

    def score_config(self, queries: str = "<prompts>") -> ScoreConfig:
        """The ScoreConfig of the same index and options, for the helpers shared with `score`."""
        same = ("index", "model", "revision", "gguf_file", "dtype", "device", "batch_tokens", "storage_options",
                "progress", "metric", "block_rows", "allow_model_mismatch", "preconditioner", "output")
        fields = {k: getattr(self, k) for k in same}
        return ScoreConfig(queries=self.queries or queries, top_k=max(self.top_k, 1), show=self.show,
                           **self.query_fields(queries=False), **fields)
