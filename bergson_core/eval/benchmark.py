"""The bundled benchmark's setup and results table (the CLI command in flows/commands/benchmark.py
runs the methods).

Setup: a generated facts corpus (24 people x 3 attributes x 3 phrasings = 216 documents, 72 queries),
a tiny GPT-2 trained from scratch on it by the project's trainer, 32 random half subsets retrained
from the same init. Everything is generated offline and deterministically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from .facts import make_facts
from .report import fmt, plot_bars, write_parquet


@dataclass
class BenchSetup:
    people: int = 24
    attributes: tuple[str, ...] = ("city", "job", "pet")
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 16
    warmup_steps: int = 10
    num_subsets: int = 32
    subset_fraction: float = 0.5
    projection_dim: int = 16
    eps: float = 1e-8  # AdamW's; optimizer-only fields (OPTIMIZER_ONLY) leave the workspace as it is
    weight_decay: float = 0.0

    @classmethod
    def quick(cls) -> "BenchSetup":
        """A smoke-test size (seconds, not minutes); its numbers mean nothing."""
        return cls(people=4, attributes=("city", "job"), hidden=16, layers=1, heads=2, epochs=2,
                   batch_size=4, warmup_steps=1, num_subsets=4, projection_dim=4)

    @classmethod
    def smooth(cls) -> BenchSetup:
        """The default task trained "metasmoothly" (Engstrom et al. 2025)."""
        return cls().smoothed()

    def smoothed(self) -> BenchSetup:
        """This setup with the optimizer options that keep MAGIC's exact metagradients bounded over the
        whole run (measured in benchmarks/dynamics.md)."""
        # Adam's eps above the typical sqrt(v_hat) (~1e-3 at the end of this task) caps the step's
        # sensitivity to its gradient; half the peak lr for twice the epochs still fits the facts
        return replace(self, eps=3e-3, lr=self.lr / 2, epochs=self.epochs * 2)

    def train_options(self) -> dict:
        """The trainer's options (bergson_core.config.eval.TrainOptions) of this setup."""
        return {"optimizer": "adamw", "lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay,
                "epochs": self.epochs, "batch_size": self.batch_size, "warmup_steps": self.warmup_steps,
                "schedule": "linear", "train_loss": "mean"}


OPTIMIZER_ONLY = ("eps", "weight_decay")


def prepare_workspace(workdir: str, setup: BenchSetup) -> dict:
    """corpus.jsonl, queries.jsonl and the init model under workdir (written once, then reused, so
    their fingerprints and the bank stay valid)."""
    from ..model.tiny import save_tiny

    paths = {"corpus": os.path.join(workdir, "corpus.jsonl"), "queries": os.path.join(workdir, "queries.jsonl"),
             "init": os.path.join(workdir, "init"), "setup": os.path.join(workdir, "setup.json")}
    # fields added after workspaces existed stay out, so those workspaces (and their banks) stay valid
    wanted = json.dumps({k: v for k, v in asdict(setup).items() if k not in OPTIMIZER_ONLY}, sort_keys=True)
    if os.path.exists(paths["setup"]) and open(paths["setup"]).read() == wanted:
        return paths
    os.makedirs(workdir, exist_ok=True)
    docs, queries = make_facts(setup.people, setup.attributes)
    for path, rows in ((paths["corpus"], docs), (paths["queries"], queries)):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [d["text"] for d in docs] + [f"{q['prompt']} {q['completion']}" for q in queries]
    save_tiny(paths["init"], "gpt2", texts, seed=0, hidden=setup.hidden, layers=setup.layers, heads=setup.heads)
    with open(paths["setup"], "w") as f:
        f.write(wanted)  # last: a workspace without it is rebuilt
    return paths


COLUMNS = [("method", "method"), ("lds", "LDS"), ("lds_stderr", "± s.e."), ("recall@10", "recall@10"),
           ("recall@10_stderr", "± s.e."), ("mrr", "MRR"), ("mrr_stderr", "± s.e."),
           ("seconds", "wall time (s)"), ("notes", "notes")]


def table_tag(setup_name: str, subset_fraction: float | None = None) -> str:
    """The suffix naming a table's files and workdir: "" (default), "-smooth", "-keep95", ..."""
    tag = "" if setup_name == "default" else f"-{setup_name}"
    if subset_fraction is not None and subset_fraction != 0.5:
        tag += f"-keep{round(subset_fraction * 100)}"
    return tag


def scatter_name(tag: str) -> str:
    """The predicted-vs-actual plot's file name next to a table (tag from `table_tag`)."""
    return f"predicted_vs_actual{tag}.png"


def results_markdown(rows: list[dict], info: dict, plot: str = "results.png") -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), 1 if k == "seconds" else 3) for k, _ in COLUMNS) + " |" for r in rows]
    c = info["cost"]
    scatter = scatter_name(info.get("table", ""))
    return "\n".join([
        "# Attribution benchmark: LDS and fact recall" + (
            f" ({info['setup']} training recipe)" if info.get("setup", "default") != "default" else ""),
        "",
        f"Regenerate with `{info['command']}` ({info['machine']}).",
        "",
        head, rule, *body,
        "",
        f"- **Setup.** {info['documents']} documents (facts about {info['people']} people, "
        f"{info['attributes']} attributes, 3 phrasings each), {info['queries']} queries (the first phrasing "
        "cut before the value; loss on the value only). A tiny GPT-2 "
        f"({info['model']}) trained from scratch with the project's trainer ({info['recipe']}).",
        f"- **LDS** (Park et al. 2023): Spearman between the summed scores of the kept documents and minus the "
        f"query loss of a model retrained from the same init on each of {info['subsets']} random "
        f"{info['fraction']:.0%} subsets (left-out documents get loss weight 0; same data order), per query, "
        "then mean ± standard error over queries.",
        "- **recall@10 / MRR**: the share of each query's 3 supporting documents in its top 10 (and the reciprocal "
        "rank of the first one), mean ± standard error over queries.",
        "- **Wall time**: the method's own cost (index build + scoring, each through its Prefect flow), not the "
        "retraining, which is shared by every row.",
        f"- **Cost of validation**: {c['retrainings']} retrainings x {c['seconds_per_retraining']:.2f} s = "
        f"{c['retraining_seconds']:.1f} s, plus the full model ({info['full_seconds']:.1f} s); the bank is "
        "stored and reused, so a new method's row costs no retraining.",
        f"- Total wall time of this regeneration: {info['total_seconds']:.1f} s "
        f"(retraining done in this run: {info['retrained_now']} models).",
        "",
        f"![LDS and recall@10 per method]({plot})",
        "",
        "Predicted vs actual query-loss change for three queries: "
        f"[{scatter}]({scatter}).",
        "",
    ])


def write_results(rows: list[dict], info: dict, output_stem: str) -> dict:
    """<stem>.md, <stem>.parquet and <stem>.png (bars of LDS and recall@10 with error bars)."""
    os.makedirs(os.path.dirname(output_stem) or ".", exist_ok=True)
    with open(output_stem + ".md", "w") as f:
        f.write(results_markdown(rows, info, os.path.basename(output_stem) + ".png"))
    write_parquet([{k: r.get(k) for k, _ in COLUMNS} for r in rows], output_stem + ".parquet")
    names = [r["method"] for r in rows]
    plot_bars([
        {"title": "LDS (mean ± s.e. over queries)", "names": names, "values": [r.get("lds") for r in rows],
         "errors": [r.get("lds_stderr") for r in rows]},
        {"title": "recall@10 (mean ± s.e. over queries)", "names": names,
         "values": [r.get("recall@10") for r in rows], "errors": [r.get("recall@10_stderr") for r in rows]},
    ], output_stem + ".png")
    return {"markdown": output_stem + ".md", "parquet": output_stem + ".parquet", "plot": output_stem + ".png"}
