"""Reading corpora and query sets, and turning rows into token ids with loss masks.

Accepted: a `datasets` folder saved with `save_to_disk`, a JSONL / Parquet / CSV file at any fsspec
URL (local or s3://), or a hub dataset id. Files are read with pyarrow into an Arrow-backed
`datasets.Dataset`, so row access is cheap and errors can name the bad line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import pyarrow as pa

from ..errors import InputError
from ..fs import url_to_fs

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Corpus:
    dataset: object  # datasets.Dataset
    uri: str
    fingerprint: str

    def __len__(self) -> int:
        return len(self.dataset)


def _format_of(uri: str) -> str | None:
    for ext, fmt in FILE_FORMATS.items():
        if uri.lower().endswith(ext):
            return fmt
    return None


def _read_jsonl(raw: bytes, uri: str) -> pa.Table:
    rows = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{uri} is not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}; a binary file?): "
                         "give a JSONL file") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{uri} line {lineno} is not valid JSON ({e.msg}): fix or remove that line") from e
        if not isinstance(row, dict):
            raise InputError(f"{uri} line {lineno} is not a JSON object: each line must be {{\"column\": value}}")
        rows.append(row)
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputError(f"{uri}: rows have inconsistent column types ({e}): make each column one type") from e


def _read_file(uri: str, fmt: str, storage_options: dict) -> tuple[pa.Table, str]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = url_to_fs(uri, storage_options)
    if not fs.exists(path):
        raise InputError(f"dataset file {uri!r} does not exist: check the path or URL")
    info = fs.info(path)
    stamp = f"{info.get('size')}:{info.get('ETag') or info.get('mtime') or ''}"
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        if fmt == "json":
            table = _read_jsonl(raw, uri)
        elif fmt == "parquet":
            table = pq.read_table(pa.BufferReader(raw))
        else:
            table = pacsv.read_csv(pa.BufferReader(raw))
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        first = "".join(c if c.isprintable() else "?" for c in first)[:160]  # a binary file's bytes stay out
        raise InputError(f"could not read {uri!r} as {fmt}: {first}") from None
    return table, stamp


def load_corpus(uri: str, split: str = "train", storage_options: dict | None = None) -> Corpus:
    """Open a corpus or query set; raise InputError with a fix for anything unreadable."""
    import datasets

    storage_options = storage_options or {}
    if not uri:
        raise InputError("no dataset given: pass --dataset PATH_OR_URL")
    fmt = _format_of(uri)
    if fmt:
        table, stamp = _read_file(uri, fmt, storage_options)
        # our own fingerprint: datasets would otherwise hash the whole table (slow, noisy logs)
        ds = datasets.Dataset(table, fingerprint=hashlib.sha256(f"{uri}|{stamp}".encode()).hexdigest()[:16])
    elif os.path.isdir(uri):
        try:
            ds = datasets.load_from_disk(uri)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(f"{uri!r} is not a dataset saved with save_to_disk: {e}") from e
        except IndexError as e:  # datasets fails this way on a saved dataset with no shards (0 rows)
            raise InputError(f"dataset {uri!r} has no data files (an empty dataset?): give at least one row") from e
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise InputError(f"split {split!r} not in {uri!r} (splits: {', '.join(ds)}): pass --split")
            ds = ds[split]
        stamp = ds._fingerprint
    elif os.path.isfile(uri):  # it exists, so "not found" would mislead
        raise InputError(f"dataset {uri!r} is a file of an unknown format: give a .jsonl, .parquet or .csv file "
                         "(named so), or a save_to_disk folder")
    elif "://" in uri or uri.startswith(("/", ".")) or os.path.sep in uri and uri.count("/") > 1:
        raise InputError(
            f"dataset {uri!r} not found: pass a .jsonl/.parquet/.csv file, a save_to_disk folder or a hub id"
        )
    else:
        try:
            ds = datasets.load_dataset(uri, split=split)
        except Exception as e:  # the hub raises many types; all mean "could not get it"
            raise InputError(f"could not load dataset {uri!r} from the hub: {str(e).splitlines()[0]}") from e
        stamp = ds._fingerprint
    if len(ds) == 0:
        raise InputError(f"dataset {uri!r} has no rows: give a corpus with at least one document")
    fp = hashlib.sha256(f"{uri}|{len(ds)}|{','.join(ds.column_names)}|{stamp}".encode()).hexdigest()[:16]
    return Corpus(ds, uri, fp)


def check_columns(corpus: Corpus, *columns: str | None) -> None:
    names = corpus.dataset.column_names
    for col in columns:
        if col is not None and col not in names:
            raise InputError(
                f"column {col!r} not in {corpus.uri!r} (columns: {', '.join(names)}): pass the right column name"
            )


@dataclass
class Doc:
    """One tokenised document. labels[t] = -100 where position t carries no loss."""

    index: int
    doc_id: str
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0  # scales the document's loss (a policy-gradient advantage, data/rewards.py)
    rejected: "Doc | None" = None  # the rejected completion of a preference pair (model/loss.py log odds)

    @property
    def num_loss_tokens(self) -> int:
        # the first label never counts: nothing predicts it; a pair counts only when both sides do
        own = sum(1 for t in self.labels[1:] if t != -100)
        return own if self.rejected is None or own == 0 else min(own, self.rejected.num_loss_tokens)


def _text(value) -> str:
    """A cell as text: a null is empty (no loss tokens), never the word "None"."""
    return "" if value is None else str(value)


def _completions(tokenizer, prompts: list[list[int]], completions: list, max_length: int):
    """(ids, labels) of prompt + completion, loss on the completion only."""
    comps = tokenizer(list(map(_text, completions)), add_special_tokens=False)["input_ids"]
    for p, c in zip(prompts, comps):
        yield (p + c)[:max_length], ([-100] * len(p) + c)[:max_length]


def tokenize_rows(
    corpus: Corpus,
    start: int,
    stop: int,
    tokenizer,
    max_length: int,
    text_column: str = "text",
    prompt_column: str | None = None,
    completion_column: str | None = None,
    id_column: str | None = None,
    conversation_column: str | None = None,
    reward_column: str | None = None,
    rejected_column: str | None = None,
) -> list[Doc]:
    """Tokenise rows [start, stop). With prompt+completion only completion tokens carry loss; with a
    conversation column only the assistant's tokens (data/chat.py); with a reward column each
    document's loss is weighted by its advantage over its prompt's mean reward (data/rewards.py); with
    a rejected column each document is a (completion, rejected completion) preference pair."""
    rows = corpus.dataset.select(range(start, stop)).to_dict()
    n = stop - start
    ids = rows[id_column] if id_column else [str(start + i) for i in range(n)]
    docs = []
    if conversation_column:
        from .chat import chat_tokens

        for i, messages in enumerate(rows[conversation_column]):
            tok, lab = chat_tokens(tokenizer, messages, max_length)
            docs.append(Doc(start + i, str(ids[i]), tok, lab))
    elif prompt_column and completion_column:
        prompts = tokenizer(list(map(_text, rows[prompt_column])))["input_ids"]
        for i, (tok, lab) in enumerate(_completions(tokenizer, prompts, rows[completion_column], max_length)):
            docs.append(Doc(start + i, str(ids[i]), tok, lab))
        if rejected_column:
            for doc, (tok, lab) in zip(docs, _completions(tokenizer, prompts, rows[rejected_column], max_length)):
                doc.rejected = Doc(doc.index, doc.doc_id, tok, lab)
    else:
        texts = tokenizer(list(map(_text, rows[text_column])))["input_ids"]
        for i, tok in enumerate(texts):
            tok = tok[:max_length]
            docs.append(Doc(start + i, str(ids[i]), tok, list(tok)))
    if reward_column:
        from .rewards import advantages

        adv = advantages(corpus, reward_column, prompt_column)
        for doc in docs:
            doc.weight = float(adv[doc.index])
    return docs
