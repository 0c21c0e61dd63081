"""`bergson inspect INDEX`: layout, sizes and health of an index (no Prefect needed)."""

import json


def add_arguments(parser) -> None:
    parser.add_argument("index", help="Index folder (local path or s3:// URL).")
    parser.add_argument("--storage-options", type=json.loads, default={}, metavar="JSON",
                        help="fsspec storage options for remote indexes.")
    parser.add_argument("--no-verify", action="store_true", help="Skip checksum verification of shards.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def run(args) -> int:
    from bergson_core.index.health import index_report
    from bergson_core.index.store import Index

    from .. import render

    report = index_report(Index(args.index, args.storage_options), verify=not args.no_verify)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render.inspect(report)
    return 0 if report["healthy"] else 1
