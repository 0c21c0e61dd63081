"""Options of curvature fits and of applying a fitted preconditioner. They are declared once, with
help text, in bergson_core.curvature_config (torch-free, so the CLI can build its flags from them
without importing torch) and re-exported here for the library's own use."""

from __future__ import annotations

from ..curvature_config import ApplyOptions, DampingOptions, FitOptions, StatsOptions

__all__ = ["ApplyOptions", "DampingOptions", "FitOptions", "StatsOptions"]
