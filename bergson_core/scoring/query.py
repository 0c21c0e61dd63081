"""`bergson query`: answer prompts from an open index, the model loaded once for all of them.

A QueryEngine opens the index (its preconditioner, corpus texts and, with --faiss, the FAISS index)
and loads the model once; `ask(prompts)` then computes the prompts' gradients with the index's spec
and returns the top-k (most helpful) and bottom-k (most harmful: the lowest scores, whose
upweighting raises the prompt's loss most) documents, written to OUTPUT/query.parquet.

Bottom-k is the top-k of the negated query (the scores are linear in the query row, and so is any
preconditioner), so one streaming pass over the shards, or one FAISS search, answers both.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pyarrow as pa

from .. import fs as fsu
from ..config.query import QueryConfig
from ..data.corpus import Corpus
from ..guards import check_index_ready, corpus_for_texts, store_doc_ids
from ..index.store import Index
from . import faiss_index as fx
from .results import topk_table, write_table
from .run import preconditioner_transforms, score_dtype
from .score import index_build_config, prepare_queries, query_gradients, score_index

QUERY_FILE = "query.parquet"
PROMPTS = "<prompts>"


def prompts_corpus(texts: list[str]) -> Corpus:
    """Typed prompts as a one-column query set (the whole text carries loss)."""
    import datasets

    fp = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    return Corpus(datasets.Dataset.from_dict({"text": list(texts)}), PROMPTS, fp)


def output_folder(cfg: QueryConfig, texts: list[str]) -> str:
    """OUTPUT/<hash of the prompts> (OUTPUT defaults to INDEX/queries): one folder per question."""
    base = (cfg.output or fsu.join(cfg.index, "queries")).rstrip("/")
    return fsu.join(base, hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12])


class QueryEngine:
    def __init__(self, cfg: QueryConfig):
        cfg.check()
        self.cfg, self.scfg = cfg, cfg.score_config()
        self.index = Index(cfg.index, cfg.storage_options)
        # exact answers stream every shard: verify them once; FAISS answers read its own checksummed file
        self.meta = check_index_ready(self.index, checksum=self.index.local and not cfg.faiss)
        self.dtype = score_dtype(self.meta, self.scfg)
        self.transform, self.doc_transform, self.precond = preconditioner_transforms(self.scfg, self.meta, self.dtype)
        self.corpus, self.corpus_warning = corpus_for_texts(self.meta, cfg.storage_options)
        self.searcher: fx.FaissSearcher | None = None
        from ..model.loading import load_model

        load_model(index_build_config(self.meta, self.scfg))  # once, here: every prompt reuses it

    # -- FAISS --------------------------------------------------------------------------------
    def open_faiss(self) -> None:
        """Search the FAISS index of cfg.faiss (built by flows/faiss_index.py) instead of the shards."""
        _, key, _ = fx.faiss_source(self.cfg)
        self.searcher = fx.FaissSearcher(fx.folder(self.index.url, key), key, self.cfg.storage_options,
                                         self.cfg.nprobe)

    # -- answering ----------------------------------------------------------------------------
    def gradients(self, texts: list[str] | None) -> tuple[np.ndarray, list[str], str | None]:
        """Query rows [Q, D] of the prompts (None: the --queries file), their previews, a model warning."""
        if texts is None:
            qg = query_gradients(self.meta, self.scfg)
        else:
            qg = query_gradients(self.meta, self.scfg, prompts_corpus(texts), ("text", None, None))
        return qg.grads, (qg.texts if texts is None else list(texts)), qg.model_warning

    def rank(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(top scores, top docs, bottom scores, bottom docs) of query rows q [Q, D]; bottom ranks
        run from the lowest score up."""
        cfg, n = self.cfg, q.shape[0]
        k = max(cfg.top_k, cfg.bottom_k)
        rows = np.concatenate([q, -q]) if cfg.bottom_k else q  # bottom-k = top-k of the negated query
        if self.searcher is None:
            scores, docs = score_index(self.index, rows, cfg.metric, "individual", k, cfg.block_rows,
                                       transform=self.transform, doc_transform=self.doc_transform, dtype=self.dtype)
        else:
            qt = prepare_queries(rows if self.transform is None else self.transform(rows), cfg.metric, "individual")
            scores, docs = self.searcher.search(qt.numpy(), k)
        return scores[:n, : cfg.top_k], docs[:n, : cfg.top_k], -scores[n:, : cfg.bottom_k], docs[n:, : cfg.bottom_k]

    def ask(self, texts: list[str] | None = None) -> dict:
        """Answer the prompts (None: the --queries file); write OUTPUT/query.parquet; return a summary
        with the first `show` rows of each prompt and side."""
        t0 = time.perf_counter()
        q, shown_texts, model_warning = self.gradients(texts)
        t1 = time.perf_counter()
        top_s, top_d, bot_s, bot_d = self.rank(q)
        t2 = time.perf_counter()
        table = self.table(shown_texts, top_s, top_d, bot_s, bot_d)
        warnings = [w for w in (model_warning, self.corpus_warning) if w]
        if warnings:
            table = table.replace_schema_metadata({"bergson.warnings": "\n".join(warnings)})
        out = output_folder(self.cfg, shown_texts if texts is not None else [self.cfg.queries or ""])
        write_table(table, fsu.join(out, QUERY_FILE), self.cfg.storage_options)
        result = {"output": fsu.join(out, QUERY_FILE), "output_folder": out, "queries": q.shape[0],
                  "query_texts": shown_texts, "top_k": self.cfg.top_k, "bottom_k": self.cfg.bottom_k,
                  "show": self.cfg.show, "metric": self.cfg.metric, "search": "faiss" if self.searcher else "exact",
                  "faiss": self.searcher.url if self.searcher else None, "preconditioner": self.precond,
                  "gradient_seconds": t1 - t0, "search_seconds": t2 - t1, "table_rows": table.num_rows,
                  "warnings": warnings, "rows": shown(table, self.cfg.show)}
        if self.cfg.per_token:
            from .per_token import PER_TOKEN_FILE, write_per_token

            result["per_token"] = write_per_token(self, q, [(top_s, top_d), (bot_s, bot_d)],
                                                  fsu.join(out, PER_TOKEN_FILE))
        return result

    def table(self, texts: list[str], top_s, top_d, bot_s, bot_d) -> pa.Table:
        """query_index, side (top/bottom), rank, doc_index, score, doc_id, text, prompt."""
        spec = self.meta["spec"]
        hits = [int(d) for s, d in ((top_s, top_d), (bot_s, bot_d)) for d in d[np.isfinite(s)]]
        ids = store_doc_ids(self.index, sorted(set(hits)))
        parts = []
        for side, s, d in (("top", top_s, top_d), ("bottom", bot_s, bot_d)):
            t = topk_table(s, d, self.corpus, spec, aggregated=False, doc_ids=ids)
            t = t.add_column(1, "side", pa.array([side] * t.num_rows, pa.string()))
            qi = t.column("query_index").to_numpy()
            parts.append(t.append_column("prompt", pa.array([texts[i] for i in qi], pa.string())))
        return pa.concat_tables(parts)


def shown(table: pa.Table, show: int) -> list[dict]:
    """The first `show` ranks of each prompt and side, as plain dicts (the terminal's rows)."""
    if show <= 0 or table.num_rows == 0:
        return []
    return table.filter(pa.array(table.column("rank").to_numpy() < show)).to_pylist()


def answer_lines(engine: QueryEngine, lines, on_answer, prompt=None) -> int:
    """Answer each non-blank line of `lines` (standard input) as it arrives; returns how many."""
    n = 0
    if prompt:
        prompt()
    for line in lines:
        text = line.strip()
        if text:
            on_answer(engine.ask([text]))
            n += 1
        if prompt:
            prompt()
    return n
