"""Growing an index: `bergson build INDEX --dataset NEW --append`.

An index's corpus is a list of segments in index.json ("corpus"): each names a source (uri, split),
the rows of that source it holds (source_start .. source_start + rows), where they sit in the index
(start, the first document index; first_shard) and a content fingerprint of the source's rows
[0, source_start + rows) (prefix_sha256: the columns the gradients depend on, row by row, so the
file format or Arrow chunking does not change it). An append adds one segment and its shards with
continuing document indices and shard numbers; existing shards are never rewritten, so fitted
statistics keep their per-shard partials (stats/<pass>/shard-N) and only the new shards' partials
are computed before the sums are reduced and refitted.

--dataset is either a new source (all its rows are new) or a source already in the list that grew
(its indexed rows must still be its first rows, else the append is refused). Appending what is
already there does nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from ..errors import ConfigError, StoreError

CORPUS_KEY = "corpus"  # the segment list in index.json


def used_columns(spec: dict) -> list[str]:
    """Columns whose values decide the stored rows (a conversation, text or prompt/completion, the
    rejected completion and reward where given, and the ids)."""
    if spec.get("conversation_column"):
        cols = [spec["conversation_column"]]
    elif spec.get("prompt_column"):
        cols = [spec["prompt_column"], spec["completion_column"]]
    else:
        cols = [spec["text_column"]]
    cols += [spec.get(k) for k in ("rejected_column", "reward_column", "id_column")]
    return [c for c in cols if c]


def prefix_fingerprints(corpus, columns: list[str], at: list[int]) -> dict[int, str]:
    """sha256 of the `columns` of rows [0, n) for every n in `at`, in one pass over the rows."""
    h = hashlib.sha256(json.dumps(columns).encode())
    out, want = {}, sorted(set(at))
    row = 0
    for batch in corpus.dataset.select_columns(columns).with_format("arrow").iter(batch_size=8192):
        values = batch.to_pydict()
        for i in range(batch.num_rows):
            while want and want[0] == row:
                out[want.pop(0)] = h.hexdigest()
            h.update(json.dumps([values[c][i] for c in columns], default=str).encode() + b"\n")
            row += 1
    for n in want:  # at the end (n == rows)
        out[n] = h.hexdigest()
    return out


def first_segment(cfg, corpus) -> dict:
    """The corpus list of a fresh index: the whole of --dataset as segment 0."""
    fp = prefix_fingerprints(corpus, used_columns(cfg.spec()), [len(corpus)])[len(corpus)]
    return {"uri": cfg.dataset, "split": cfg.split, "source_start": 0, "rows": len(corpus), "start": 0,
            "first_shard": 0, "prefix_sha256": fp, "fingerprint": corpus.fingerprint}


def segments(meta: dict) -> list[dict]:
    """The index's corpus list; an index built before the list existed is one segment without a
    content fingerprint."""
    if CORPUS_KEY in meta:
        return meta[CORPUS_KEY]
    ds = meta["dataset"]
    return [{"uri": ds["uri"], "split": meta["spec"]["split"], "source_start": 0, "rows": ds["rows"], "start": 0,
             "first_shard": 0, "prefix_sha256": None}]


def shard_ranges(meta: dict) -> list[tuple[int, int, int]]:
    """(shard, start, stop) of every shard of the index, segment by segment."""
    from .build import plan_shards

    if CORPUS_KEY not in meta:
        return plan_shards(meta["dataset"]["rows"], meta["shard_size"])
    return [(seg["first_shard"] + j, seg["start"] + a, seg["start"] + b)
            for seg in meta[CORPUS_KEY] for j, a, b in plan_shards(seg["rows"], meta["shard_size"])]


def check_compatible(cfg, old: dict, new_meta: dict) -> None:
    """Refuse an append whose options (other than the corpus), model or module layout differ."""
    same_source = cfg.model_copy(update={"dataset": old["spec"]["dataset"], "split": old["spec"]["split"]})
    if same_source.spec_hash() != old["spec_hash"]:
        spec = same_source.spec()
        diff = sorted(k for k in spec if old["spec"].get(k) != spec[k])
        raise ConfigError(f"--append to {cfg.index} needs the options it was built with ({', '.join(diff)} differ): "
                          "drop them or build a new index")
    if new_meta["model_fingerprint"] != old["model_fingerprint"] or new_meta["modules"] != old["modules"]:
        raise ConfigError(f"--append to {cfg.index} needs the model it was built with (its weights or layout "
                          "differ): use that model or build a new index")


def new_rows(cfg, old: dict, corpus) -> tuple[tuple[int, int], str]:
    """The rows of --dataset not yet in the index, and the fingerprint of all of --dataset's rows;
    raises when rows already indexed from this source changed."""
    n = len(corpus)
    cols = used_columns(old["spec"])
    mine = [s for s in segments(old) if s["uri"] == cfg.dataset and s["split"] == cfg.split]
    if not mine:
        return (0, n), prefix_fingerprints(corpus, cols, [n])[n]
    last = mine[-1]
    end = last["source_start"] + last["rows"]
    if last["prefix_sha256"] is None:
        raise StoreError(f"index {cfg.index} records no content fingerprint of {cfg.dataset} (built before --append "
                         "existed): put the new rows in a file of their own and append that")
    if n < end:
        raise StoreError(f"{cfg.dataset} has {n} rows, fewer than the {end} already indexed from it: a corpus can only "
                         "grow; build a new index")
    fps = prefix_fingerprints(corpus, cols, [end, n])
    if fps[end] != last["prefix_sha256"]:
        raise StoreError(f"the first {end} rows of {cfg.dataset} changed since they were indexed: appending would "
                         "mix two corpora; build a new index (or append the new rows as a file of their own)")
    return (end, n), fps[n]


def extended_meta(cfg, old: dict, corpus) -> dict | None:
    """index.json with --dataset's new rows as one more segment, or None when there are none."""
    (lo, hi), fp = new_rows(cfg, old, corpus)
    if hi == lo:
        return None
    segs = segments(old)
    ranges = shard_ranges(old)
    seg = {"uri": cfg.dataset, "split": cfg.split, "source_start": lo, "rows": hi - lo,
           "start": old["dataset"]["rows"], "first_shard": (ranges[-1][0] + 1) if ranges else 0, "prefix_sha256": fp,
           "fingerprint": corpus.fingerprint}
    segs = segs + [seg]
    meta = {k: v for k, v in old.items() if k != "format"}
    meta[CORPUS_KEY] = segs
    meta["num_shards"] = len(shard_ranges(meta))
    one_file = all(s["uri"] == cfg.dataset and s["split"] == cfg.split for s in segs)
    # a single grown file keeps the corpus fingerprint of load_corpus (texts, exact scoring and
    # fits from the model then read it as before); several sources have no one file to compare with
    combined = hashlib.sha256(json.dumps([s["prefix_sha256"] for s in segs]).encode()).hexdigest()[:16]
    meta["dataset"] = {**old["dataset"], "fingerprint": corpus.fingerprint if one_file else combined,
                       "rows": seg["start"] + seg["rows"]}
    if one_file and old.get("source_stamps"):  # a plain rerun of the grown file is then "nothing to do"
        from .stamps import source_stamps

        meta["source_stamps"] = source_stamps(cfg)
    elif "source_stamps" in meta:
        meta["source_stamps"] = None
    return meta


def prepare_append(cfg, index, new_meta: dict, corpus, write: bool):
    """The plan of an append (index.json extended when there are new rows); None when there is no
    index yet (the append is then a plain build)."""
    from .build import BuildPlan, checksum_skipped

    if not index.exists():
        return None
    old = index.meta()
    check_compatible(cfg, old, new_meta)
    meta = extended_meta(cfg, old, corpus) or old
    if write and meta is not old:
        index.write_meta(meta)
    return BuildPlan(index, meta, shard_ranges(meta), checksum_skipped(cfg, index))


def segment_corpus(meta: dict, start: int, storage_options: dict):
    """(corpus, shift) of the segment holding document `start`: document i is corpus row i - shift."""
    from .build import open_corpus

    seg = next((s for s in segments(meta) if s["start"] <= start < s["start"] + s["rows"]), None)
    if seg is None:
        raise StoreError(f"document {start} is in no corpus segment of the index: rerun the append")
    return open_corpus(seg["uri"], seg["split"], storage_options), seg["start"] - seg["source_start"]


def shard_source(cfg, index, start: int):
    """(spec hash to publish under, corpus, shift) of the shard starting at document `start` of an
    appended index: its rows are corpus rows [start - shift, stop - shift)."""
    meta = index.meta()
    return (meta["spec_hash"], *segment_corpus(meta, start, cfg.storage_options))


def several_sources(meta: dict) -> bool:
    return len({(s["uri"], s["split"]) for s in segments(meta)}) > 1


def check_sources(meta: dict, storage_options: dict, index: str) -> None:
    """Refuse an index of several sources when one changed since it was indexed (the corpus
    fingerprint of its last segment: size and mtime, or ETag)."""
    from .build import open_corpus

    last = {(s["uri"], s["split"]): s for s in segments(meta)}
    for (uri, split), seg in last.items():
        if open_corpus(uri, split, storage_options).fingerprint != seg.get("fingerprint"):
            raise StoreError(f"the corpus {uri} changed since index {index} was built: rebuild the index")


def index_docs(meta: dict, bcfg, tokenizer, start: int, stop: int) -> list:
    """Tokenised documents [start, stop) of an index of several sources (a range within one shard)."""
    from ..data.corpus import tokenize_rows

    corpus, shift = segment_corpus(meta, start, bcfg.storage_options)
    return renumber(tokenize_rows(corpus, start - shift, stop - shift, tokenizer, bcfg.max_length, bcfg.text_column,
                                  bcfg.prompt_column, bcfg.completion_column, bcfg.id_column,
                                  bcfg.conversation_column, bcfg.reward_column, bcfg.rejected_column),
                    shift, bcfg.id_column)


def renumber(docs: list, shift: int, id_column: str | None) -> list:
    """Documents read from a source at an offset: their index in the index (and, without an id
    column, their id, the row number) continue the corpus's."""
    if not shift:
        return docs
    return [replace(d, index=d.index + shift, doc_id=d.doc_id if id_column else str(d.index + shift)) for d in docs]


def nothing_new(cfg) -> dict | None:
    """The index's summary when an --append rerun finds no new rows and every shard present (no
    model is loaded and Prefect is not started), else None."""
    from .build import open_corpus
    from .store import Index

    index = Index(cfg.index, cfg.storage_options)
    if cfg.overwrite or not index.exists():
        return None
    old = index.meta()
    same_source = cfg.model_copy(update={"dataset": old["spec"]["dataset"], "split": old["spec"]["split"]})
    if same_source.spec_hash() != old["spec_hash"]:
        return None  # the normal path says what differs
    (lo, hi), _ = new_rows(cfg, old, open_corpus(cfg.dataset, cfg.split, cfg.storage_options))
    if hi > lo or any(not index.has_shard(s) or index.verify_shard(s, False) for s, _, _ in shard_ranges(old)):
        return None
    return {"index": cfg.index, "spec_hash": old["spec_hash"], "documents": old["dataset"]["rows"],
            "shards": old["num_shards"], "shards_computed": 0, "shards_skipped": old["num_shards"], "tokens": 0,
            "bytes": 0, "empty_documents": 0, "tokens_per_second": 0.0, "seconds": 0.0, "nothing_to_do": True}
