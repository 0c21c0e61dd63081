"""`bergson status INDEX`: what is complete, missing or corrupt in an index, and what to do next.

Reads only the store (local or s3://): shards against their manifests and checksums, score outputs,
fitted preconditioners. When PREFECT_API_URL points at a server it also lists the recent build runs
of this index. Exit status: 0 complete, 1 missing or corrupt shards, 2 no index there.
"""

from __future__ import annotations

import json
import os


def add_arguments(parser) -> None:
    parser.add_argument("index", help="Index folder (local path or s3:// URL).")
    parser.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                        help="fsspec storage options for remote indexes.")
    parser.add_argument("--no-verify", action="store_true", help="Skip checksum verification of shards (faster).")
    parser.add_argument("--repair", action="store_true",
                        help="Delete corrupt shards (manifest and data) and orphan data files, so that the next "
                             "build recomputes exactly those shards.")
    parser.add_argument("--json", action="store_true", help="Print the status as JSON.")


def run(args) -> int:
    from bergson_core.index.store import Index

    index = Index(args.index, args.storage_options)
    status = index_status(index, verify=not args.no_verify)
    if args.repair and (status["shards_corrupt"] or status["orphan_files"]):
        status["repaired"] = repair(index, status)
    status["runs"] = recent_runs(index.url)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        render(status)
    return 0 if status["complete"] else 1


def ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(out)


def index_status(index, verify: bool = True) -> dict:
    """bergson_core.index.health.index_report plus the index's other outputs."""
    from bergson_core import fs as fsu
    from bergson_core.index.health import index_report

    report = index_report(index, verify=verify)
    status = {k: report[k] for k in ("index", "spec_hash", "model", "dataset", "shards_expected",
                                     "shards_complete", "shards_missing", "shards_corrupt", "orphan_files",
                                     "bytes", "documents_stored")}
    status["complete"] = report["healthy"]
    status["verified"] = verify
    status["scores"] = _outputs(index, "scores", ("topk.parquet",))
    status["preconditioners"] = _outputs(index, "precond", ("precond.json",))
    if not index.local:
        index.fs.invalidate_cache(fsu.join(index.path, "scores"))
    return status


def _outputs(index, folder: str, marker: tuple[str, ...]) -> list[dict]:
    """Sub-folders of <index>/<folder>/, each complete when its marker file exists."""
    from bergson_core import fs as fsu

    base = fsu.join(index.path, folder)
    if not fsu.exists(index.fs, base):
        return []
    out = []
    for entry in sorted(index.fs.ls(base, detail=True), key=lambda e: e["name"]):
        if entry["type"] != "directory":
            continue
        names = {os.path.basename(p) for p in index.fs.ls(entry["name"])}
        out.append({"name": os.path.basename(entry["name"].rstrip("/")), "complete": set(marker) <= names,
                    "files": sorted(names)})
    return out


def repair(index, status: dict) -> list[str]:
    """Remove what makes shards corrupt or orphaned; a rerun of the build redoes those shards."""
    from bergson_core import fs as fsu
    from bergson_core.index.store import GRADS_DIR

    removed = []
    for i in status["shards_corrupt"]:
        for path in (index.manifest_path(i), index.shard_path(i)):  # the manifest first: then it is gone
            fsu.remove(index.fs, path)
            removed.append(os.path.basename(path))
    for name in status["orphan_files"]:
        fsu.remove(index.fs, fsu.join(index.path, GRADS_DIR, name))
        removed.append(name)
    return removed


def recent_runs(index_url: str, limit: int = 50) -> list[dict]:
    """Recent build-index flow runs of this index, when a Prefect server is configured (never fails)."""
    if not os.environ.get("PREFECT_API_URL"):
        return []
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["build-index"])),
                                         sort=FlowRunSort.START_TIME_DESC, limit=limit)
        mine = [r for r in runs if str((r.parameters.get("config") or {}).get("index", "")).rstrip("/") == index_url]
        return [{"name": r.name, "id": str(r.id), "state": r.state_name, "start": r.start_time} for r in mine[:5]]
    except Exception as e:  # the store is the source of truth; the server is only a hint
        return [{"error": f"{type(e).__name__}: {e}"}]


def render(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"index {s['index']}", show_header=False)
    ok = "[green]complete[/]" if s["complete"] else "[red]incomplete[/]"
    t.add_row("status", ok + ("" if s["verified"] else " (checksums not verified)"))
    t.add_row("shards", f"{s['shards_complete']}/{s['shards_expected']} complete, "
                        f"{s['documents_stored']:,} of {s['dataset']['rows']:,} documents, {s['bytes'] / 2**20:,.1f} MiB")
    t.add_row("missing", ranges(s["shards_missing"]) or "none")
    t.add_row("corrupt", ranges(s["shards_corrupt"]) or "none")
    t.add_row("orphan files", ", ".join(s["orphan_files"]) or "none")
    for kind in ("scores", "preconditioners"):
        items = [f"{o['name']}" + ("" if o["complete"] else " (incomplete)") for o in s[kind]]
        t.add_row(kind, ", ".join(items) or "none")
    for r in s.get("runs", []):
        t.add_row("build run", r.get("error") or f"{r['name']} {r['state']} {r['start'] or ''}")
    if s.get("repaired"):
        t.add_row("repaired", "removed " + ", ".join(s["repaired"]))
    console.print(t)
    if not s["complete"]:
        console.print("next: rerun the same `bergson build` (or retry the build-index flow run): finished shards "
                      "are kept and only the missing ones are computed"
                      + ("; corrupt shards need `bergson status --repair` first" if s["shards_corrupt"]
                         and not s.get("repaired") else ""))
