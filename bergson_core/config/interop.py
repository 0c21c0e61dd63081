"""Options of `bergson export` and `bergson import` (moving an index to and from Bergson 2.5.1)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import _Options


class ExportConfig(_Options):
    """`bergson export`: write an index in another tool's on-disk layout."""

    index: str = Field(..., description="Index folder built by `bergson build` (local path or s3:// URL).")
    output: str = Field(..., description="Folder to write (local): Bergson's gradients.bin, info.json, data.hf, "
                        "processor_config.yaml.")
    format: Literal["bergson"] = Field("bergson", description="Layout to write: Bergson 2.5.1's index.")
    overwrite: bool = Field(False, description="Replace an existing output folder.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for a remote index.")


class ImportConfig(_Options):
    """`bergson import`: read another tool's index into this store."""

    source: str = Field(..., description="Bergson index folder (gradients.bin + info.json + data.hf), local.")
    index: str = Field(..., description="Index folder to create (local path or s3:// URL).")
    format: Literal["bergson"] = Field("bergson", description="Layout of SOURCE: Bergson 2.5.1's index.")
    model: str | None = Field(None, description="The model the Bergson index was built with (default: the one its "
                              "config.yaml names), read for its module names.")
    shard_size: int = Field(1000, gt=0, description="Documents per shard of the new index (an index exported by "
                            "`bergson export` keeps its own).")
    overwrite: bool = Field(False, description="Replace an existing index at INDEX.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for a remote index.")
