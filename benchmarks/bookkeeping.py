"""What it costs a build to find out which shards are done, at 10^3, 10^4 and 10^5 shards on S3.

A moto S3 server (its own process) holds an index with N synthetic shards (a manifest and a small
data object each, as a build writes them). Three ways to answer "which shards are missing?":

  per shard   what a build did before: a HEAD of the manifest, then GET manifest + HEAD + HEAD of
              the data file for each shard (`has_shard` + `verify_shard`)
  listing     one paginated LIST of grads/ (1,000 keys a request) for existence and sizes, then every
              manifest read at once (concurrent GETs): `Index.check_shards` without summaries
  summaries   the same LIST plus one GET per block summary (written by each fan-out child,
              blocks/shard-A-shard-B.json): no per-shard request at all

`--writes` also counts the requests one shard costs when it is written (a tiny model's shards built
straight into the moto server with `build_shard`), and when `build_shard` is handed a finished one.

Requests are counted at the client (botocore's before-send event); wall time is noisy on a shared
machine, request counts are exact. Run:

    python benchmarks/bookkeeping.py                       # 10^3, 10^4, 10^5 (per shard up to 10^4)
    python benchmarks/bookkeeping.py --sizes 1000 --per-shard-max 1000
    python benchmarks/bookkeeping.py --sizes 100000 --per-shard-max 0 --listing-max 0   # summaries only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVER = textwrap.dedent('''
    import json, sys, logging
    from moto.server import ThreadedMotoServer
    from moto.backends import get_backend
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port, bucket, n, block = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = get_backend("s3")["123456789012"]["global"]
    s3.create_bucket(bucket, "us-east-1")
    data = b"x" * 64  # the data object's size is all the listing sees
    spec = "0123456789abcdef"
    s3.put_object(bucket, "idx/index.json", json.dumps({"format": "bergson-index/1", "spec_hash": spec}).encode())
    blocks = {}
    for i in range(n):  # written straight into the backend: filling it over HTTP would dominate the run
        m = {"shard": i, "file": f"shard-{i:05d}.arrow", "start": i * 1000, "stop": i * 1000 + 1000, "rows": 1000,
             "bytes": len(data), "sha256": "0" * 64, "schema": "0" * 16, "spec_hash": spec, "tokens": 500000,
             "empty_documents": 0}
        s3.put_object(bucket, f"idx/grads/shard-{i:05d}.arrow", data)
        s3.put_object(bucket, f"idx/grads/shard-{i:05d}.json", (json.dumps(m, indent=2, sort_keys=True) + "\\n").encode())
        blocks.setdefault(i // block, {})[str(i)] = m
    for b, ms in blocks.items():
        lo, hi = min(map(int, ms)), max(map(int, ms))
        s3.put_object(bucket, f"sum/blocks/shard-{lo:05d}-shard-{hi:05d}.json", json.dumps(ms).encode())
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
''')


def _counting(index) -> list[int]:
    """Count the HTTP requests the index's s3fs client sends."""
    fs = index.fs.unwrapped
    fs.connect()
    count = [0]

    def sent(**_):
        count[0] += 1

    fs.s3.meta.events.register("before-send.s3", sent)
    return count


def measure(n: int, block: int, per_shard: bool, ways=("listing", "summaries")) -> dict:
    from bergson_core.index.store import MISSING, Index
    from tests.service.conftest import free_port

    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), "bench", str(n), str(block)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert server.stdout.readline().strip() == "ready"
    fill = time.perf_counter() - t0
    opts = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "testing", "secret": "testing",
            "skip_instance_cache": True}
    out = {"shards": n, "fill_s": fill}
    try:
        index = Index("s3://bench/idx", opts)
        count = _counting(index)
        index.spec_hash()
        for name, run in (("listing", lambda ix: ix.check_shards(range(n), False)),
                          ("summaries", lambda ix: _with_summaries(ix, opts, n))):
            if name not in ways:
                continue
            count[0] = 0
            t = time.perf_counter()
            bad = run(index)
            out[name] = (time.perf_counter() - t, count[0])
            assert not bad, list(bad.items())[:3]
        if per_shard:
            count[0] = 0
            t = time.perf_counter()
            missing = [i for i in range(n) if not index.has_shard(i) or index.verify_shard(i, False) not in (None,)]
            out["per shard"] = (time.perf_counter() - t, count[0])
            assert not missing
        assert MISSING == index.check_shards([n], False)[n]  # a shard that is not there is found missing
    finally:
        server.stdin.close()
        server.wait(30)
    return out


def _with_summaries(index, opts, n):
    """check_shards with the summaries under another prefix (so the listing run above reads none)."""
    index.block_summaries = lambda: _summaries(index, opts)
    try:
        return index.check_shards(range(n), False)
    finally:
        del index.block_summaries


def _summaries(index, opts):
    from bergson_core.index.store import Index

    other = Index("s3://bench/sum", opts)
    other.fs = index.fs  # the counted client
    return other.block_summaries()


def write_requests() -> dict:
    """Requests per shard written, and per finished shard handed to build_shard, on a moto server."""
    import logging
    import tempfile

    import boto3
    from moto.server import ThreadedMotoServer

    from bergson_core.config import BuildConfig
    from bergson_core.index.build import build_shard, prepare_build
    from bergson_core.index.store import Index
    from bergson_core.model.tiny import save_tiny
    from tests.service.conftest import free_port, texts

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        docs = texts(60)
        s3.put_object(Bucket="bench", Key="c.jsonl", Body="".join(json.dumps({"text": t}) + "\n" for t in docs).encode())
        model = save_tiny(tempfile.mkdtemp(), "gpt2", docs, hidden=32, layers=2)
        cfg = BuildConfig(index="s3://bench/idx", model=model, dataset="s3://bench/c.jsonl", shard_size=10, progress=False)
        plan = prepare_build(cfg)
        count = _counting(Index(cfg.index))
        build_shard(cfg, *plan.shards[0])  # the corpus read and the caches, once per process
        count[0] = 0
        for shard in plan.shards[1:]:
            build_shard(cfg, *shard)
        written = count[0] / (len(plan.shards) - 1)
        count[0] = 0
        for shard in plan.shards:
            build_shard(cfg, *shard)
        return {"written": written, "handed a finished one": count[0] / len(plan.shards)}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--block", type=int, default=100, help="shards per block summary (a fan-out block)")
    ap.add_argument("--per-shard-max", type=int, default=10000, help="largest N measured the per-shard way")
    ap.add_argument("--listing-max", type=int, default=100000, help="largest N measured the listing way")
    ap.add_argument("--writes", action="store_true", help="also count the requests of writing a shard")
    args = ap.parse_args()
    if args.writes:
        print("requests per shard:", write_requests(), flush=True)
    print(f"{'shards':>8} {'way':>10} {'seconds':>9} {'requests':>9} {'req/shard':>9} {'x faster':>9}")
    for n in args.sizes:
        ways = ("listing", "summaries") if n <= args.listing_max else ("summaries",)
        r = measure(n, args.block, n <= args.per_shard_max, ways)
        base = r.get("per shard")
        for way in ("per shard", "listing", "summaries"):
            if way not in r:
                continue
            s, req = r[way]
            ratio = f"{base[0] / s:9.1f}" if base else f"{'':>9}"
            print(f"{n:>8} {way:>10} {s:9.2f} {req:9d} {req / n:9.3f} {ratio}", flush=True)
        print(json.dumps({k: v for k, v in r.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
