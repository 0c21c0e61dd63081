"""Checks that keep a score from being silently wrong: the query model is the index's model, the
corpus the texts are read from is the one that was indexed, queries carry loss, and the index is
whole before any query gradient is computed."""

from __future__ import annotations

import os

from .errors import InputError, StoreError, UserError
from .index.store import Index


def check_query_model(meta: dict, fingerprint: str, allow: bool, index_url: str) -> str | None:
    """Refuse a query model whose weights differ from the index's (unless `allow`); returns the
    warning to show when a mismatch is allowed, else None."""
    want = meta.get("model_fingerprint")
    if not want or fingerprint == want:
        return None
    what = (f"the query model's fingerprint {fingerprint} differs from the one index {index_url} was built "
            f"with ({want}): its weights or config changed")
    if not allow:
        raise StoreError(f"{what}; score with the index's model, rebuild the index, or pass "
                         "--allow-model-mismatch (e.g. for a checkpoint of the same run)")
    return f"{what}; scored anyway (--allow-model-mismatch)"


def corpus_for_texts(meta: dict, storage_options: dict) -> tuple[object | None, str | None]:
    """The indexed corpus to read document texts from, or (None, why) when it is gone or changed
    since the build: row numbers would then point at other documents."""
    from .index.build import open_corpus

    spec = meta["spec"]
    try:
        corpus = open_corpus(spec["dataset"], spec["split"], storage_options)
    except UserError as e:
        return None, f"corpus {spec['dataset']} cannot be read ({e}): texts left empty, doc ids taken from the index"
    want = meta.get("dataset", {}).get("fingerprint")
    if want and corpus.fingerprint != want:
        return None, (f"corpus {spec['dataset']} changed since the index was built (fingerprint "
                      f"{corpus.fingerprint} != {want}): texts left empty, doc ids taken from the index")
    return corpus, None


def checked_topk_table(index: Index, meta: dict, scores, docs, aggregated: bool, warnings: list[str]):
    """topk_table with texts only from the corpus that was indexed and doc ids from the store (where
    its shards exist); a changed or missing corpus adds its warning to `warnings` and to the table's
    metadata, so the file says so too, not only the terminal."""
    import numpy as np

    from .scoring.results import topk_table

    corpus, corpus_warning = corpus_for_texts(meta, index.storage_options)
    shown = sorted({int(d) for d in np.asarray(docs)[np.isfinite(scores)]})
    ids = store_doc_ids(index, shown)
    if len(ids) < len(shown):  # recomputed corpus gradients (exact EK-FAC): no shards, ids from the corpus
        ids = None
    table = topk_table(scores, docs, corpus, meta["spec"], aggregated=aggregated, doc_ids=ids)
    if corpus_warning:
        warnings.append(corpus_warning)
    if warnings:
        table = table.replace_schema_metadata({"bergson.warnings": "\n".join(warnings)})
    return table


def store_doc_ids(index: Index, doc_indices: list[int]) -> dict[int, str]:
    """doc_id of each document, as stored in the index's shards (authoritative, unlike the corpus)."""
    want = sorted(set(doc_indices))
    out: dict[int, str] = {}
    for m in index.manifests():
        rows = [d for d in want if m["start"] <= d < m["stop"]]
        if rows:
            ids = index.open_shard(m["shard"], m).column("doc_id").to_pylist()
            out.update({d: ids[d - m["start"]] for d in rows})
    return out


def refuse_empty_queries(docs: list, uri: str) -> None:
    """A query with no loss tokens has a zero gradient and would rank documents by nothing."""
    empty = [d.index for d in docs if d.num_loss_tokens == 0]
    if not empty:
        return
    shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    raise InputError(f"{len(empty)} of {len(docs)} queries in {uri} have no loss tokens (empty, null or a single "
                     f"token) at rows {shown} (0-based): give them text or remove them")


def check_index_ready(index: Index, checksum: bool) -> dict:
    """Refuse an incomplete or corrupt index before any query gradient is computed."""
    meta = index.meta()
    manifests = index.manifests()
    have = {m["shard"] for m in manifests}
    missing = [i for i in range(meta["num_shards"]) if i not in have]
    if missing:
        raise StoreError(f"index {index.url} is incomplete ({len(have)}/{meta['num_shards']} shards, missing "
                         f"{', '.join(map(str, missing[:10]))}): rerun `bergson build`")
    for m in manifests:
        why = index.verify_shard(m["shard"], checksum)
        if why:
            raise StoreError(f"shard {m['shard']} of index {index.url} is corrupt ({why}): rerun `bergson build` "
                             "to recompute it")
    return meta


ARROW_MAX_LIST = 2**31 - 1  # Arrow's FixedSizeList length is an int32


def available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_row_size(row_width: int, rows: int, grad_dtype: str, projection_dim: int, modules: int) -> None:
    """Refuse a projection whose rows cannot be stored or whose shard cannot be held in memory,
    before anything is allocated or written."""
    from .errors import ConfigError

    need = rows * row_width * (4 + (2 if grad_dtype == "float16" else 4))  # float32 rows + encoded copy
    have = available_memory()
    if row_width > ARROW_MAX_LIST or need > have:
        raise ConfigError(
            f"--projection-dim {projection_dim} gives {row_width:,} numbers per document ({modules} modules): a shard "
            f"of {rows:,} documents needs {need / 2**30:,.1f} GiB, "
            + (f"more than the {have / 2**30:,.1f} GiB of memory available" if need > have
               else f"and a row may hold at most {ARROW_MAX_LIST:,} numbers")
            + ": lower --projection-dim (or --shard-size)")
