"""Every option of every command, declared once as pydantic models (torch-free).

The same classes give the CLI flags, the YAML config file, the Prefect flow parameters and the
dashboard form. `base` holds the shared option blocks (model, data, gradient, run, the query set) and the build /
score configs; the other modules compose them per stage (docs/architecture.md).
"""

from .base import (
    CODE_VERSION,
    QUERY_FIELDS,
    BuildConfig,
    CheckpointQueries,
    DataOptions,
    GradientOptions,
    IndexQueries,
    ModelOptions,
    OptionalIndexQueries,
    QueryOptions,
    QuerySet,
    RunOptions,
    ScoreConfig,
    _Options,
    spec_hash,
)

__all__ = [
    "CODE_VERSION",
    "QUERY_FIELDS",
    "BuildConfig",
    "CheckpointQueries",
    "DataOptions",
    "GradientOptions",
    "IndexQueries",
    "ModelOptions",
    "OptionalIndexQueries",
    "QueryOptions",
    "QuerySet",
    "RunOptions",
    "ScoreConfig",
    "_Options",
    "spec_hash",
]
