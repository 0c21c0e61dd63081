"""`bergson export` / `bergson import`: file conversions, run in this process (no flow, no Prefect)."""

from __future__ import annotations


def export(cfg) -> dict:
    from bergson_core.index.bergson_format import export_bergson

    return export_bergson(cfg)


def import_(cfg) -> dict:
    from bergson_core.index.bergson_format import import_bergson

    return import_bergson(cfg)


def show(result: dict) -> None:
    from ..render import console

    where = result.get("output") or result.get("index")
    console.print(f"{result['documents']:,} documents written to {where} "
                  + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("documents", "output", "index")))
