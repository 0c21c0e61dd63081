"""Options of curvature fits and of applying a fitted preconditioner. They are declared once, with
help text, in bergson_core.config.curvature (torch-free, so the CLI can build its flags from them
without importing torch) and re-exported here for the library's own use."""

from __future__ import annotations

from ..config.curvature import ApplyOptions, DampingOptions, FitOptions, StatsOptions

__all__ = ["ApplyOptions", "DampingOptions", "FitOptions", "StatsOptions"]
