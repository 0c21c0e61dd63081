"""Peak memory and time of a long-document gradient pass with and without --gradient-checkpointing.

One Llama built from a config (hidden 256, 8 layers, vocabulary 512), one document of --tokens
tokens, p = 16 projection; each variant runs in a fresh process (peak RSS is per process), and the
ratio checkpointed / plain of peak-RSS growth over the loaded model and of wall time is printed.

    .venv/bin/python benchmarks/checkpointing.py [--tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time


def one(tokens: int, checkpointed: bool) -> dict:
    import torch

    from bergson_core.config import GradientOptions
    from bergson_core.data.corpus import Doc
    from bergson_core.gradients.extract import compute_gradients, tracked_modules
    from bergson_core.model.loading import LoadedModel, checkpoint_layers
    from bergson_core.model.tiny import tiny_model

    model = tiny_model("llama", 512, hidden=256, layers=8, heads=8, max_positions=tokens).requires_grad_(False)
    if checkpointed:
        checkpoint_layers(model)
    loaded = LoadedModel(model, None, torch.device("cpu"), torch.float32, threading.Lock())
    opts = GradientOptions(projection_dim=16)
    modules = tracked_modules(loaded, opts)
    ids = torch.randint(3, 512, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    doc = Doc(0, "0", ids, ids)
    compute_gradients(loaded, modules, [Doc(0, "w", ids[:64], ids[:64])], opts, 100_000)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rows, _ = compute_gradients(loaded, modules, [doc], opts, tokens)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"growth_mib": (peak - before) / 1024, "seconds": seconds, "row": rows[0, :4].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--child", choices=["plain", "checkpointed"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.tokens, args.child == "checkpointed")))
        return
    out = {}
    for kind in ("plain", "checkpointed"):
        proc = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--child", kind],
                              capture_output=True, text=True, check=True)
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind:13s} peak RSS growth {out[kind]['growth_mib']:8.1f} MiB   {out[kind]['seconds']:6.2f} s")
    p, c = out["plain"], out["checkpointed"]
    print(f"checkpointed / plain: memory {c['growth_mib'] / p['growth_mib']:.2f}, time {c['seconds'] / p['seconds']:.2f}; "
          f"same row: {max(abs(a - b) for a, b in zip(p['row'], c['row'])):.1e} max difference")


if __name__ == "__main__":
    main()
