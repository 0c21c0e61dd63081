"""Reading corpora: every accepted format gives the same rows, and every unreadable input is a
one-line InputError that says what is wrong (and where)."""

from __future__ import annotations

import os

import pytest

from bergson_core.data.corpus import check_columns, load_corpus, tokenize_rows
from bergson_core.errors import InputError, UserError

from .helpers import write_jsonl

ROWS = [
    {"id": "a", "text": "the cat sat on the mat", "prompt": "the cat", "completion": "sat on the mat"},
    {"id": "b", "text": "birds sing", "prompt": "birds", "completion": "sing"},
    {"id": "c", "text": "we read books", "prompt": "we", "completion": "read books"},
]


def columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import datasets
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("data")
    table = pa.table(columns(ROWS))
    out = {"jsonl": write_jsonl(root / "c.jsonl", ROWS)}
    out["parquet"] = str(root / "c.parquet")
    pq.write_table(table, out["parquet"])
    out["csv"] = str(root / "c.csv")
    pacsv.write_csv(table, out["csv"])
    out["disk"] = str(root / "saved")
    datasets.Dataset.from_dict(columns(ROWS)).save_to_disk(out["disk"])
    out["dict"] = str(root / "saved-dict")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(columns(ROWS)), "test": datasets.Dataset.from_dict(columns(ROWS[:1]))}
    ).save_to_disk(out["dict"])
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "disk", "dict"])
def test_every_format_reads_the_same_rows(files, fmt):
    corpus = load_corpus(files[fmt])
    assert len(corpus) == len(ROWS)
    assert set(corpus.dataset.column_names) == set(ROWS[0])
    assert corpus.dataset.to_list() == [{k: r[k] for k in corpus.dataset.column_names} for r in ROWS]
    assert corpus.uri == files[fmt] and len(corpus.fingerprint) == 16
    check_columns(corpus, "text", "prompt", "completion", "id", None)


def test_datasetdict_split(files):
    assert len(load_corpus(files["dict"], split="test")) == 1
    with pytest.raises(InputError, match="split 'validation'.*train"):
        load_corpus(files["dict"], split="validation")


def test_fingerprint_follows_the_contents(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", ROWS)
    first = load_corpus(path).fingerprint
    assert load_corpus(path).fingerprint == first
    write_jsonl(path, ROWS + [{"id": "d", "text": "one more", "prompt": "one", "completion": "more"}])
    assert load_corpus(path).fingerprint != first


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n{"text": "never read"}\n')
    with pytest.raises(InputError, match=r"line 4\b") as err:
        load_corpus(str(path))
    assert "bad.jsonl" in str(err.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "fine"}\n["a", "list"]\n')
    with pytest.raises(InputError, match=r"line 2\b"):
        load_corpus(str(path))


def test_jsonl_with_inconsistent_types(tmp_path):
    path = tmp_path / "types.jsonl"
    path.write_text('{"text": "fine"}\n{"text": {"nested": 1}}\n')
    with pytest.raises(InputError):
        load_corpus(str(path))


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("blank.jsonl", "\n  \n"), ("e.csv", ""),
                                           ("header-only.csv", "text\n"), ("e.parquet", "")])
def test_empty_file_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError):
        load_corpus(str(path))


def test_empty_saved_dataset_is_refused(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="empty"):
        load_corpus(str(tmp_path / "empty"))


def test_unknown_column_is_refused(files):
    corpus = load_corpus(files["jsonl"])
    with pytest.raises(InputError, match="'body'.*columns: .*text"):
        check_columns(corpus, "text", "body")


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet", "missing.csv", "missing-folder/"])
def test_missing_input_is_refused(tmp_path, name):
    with pytest.raises(InputError, match="missing"):
        load_corpus(str(tmp_path / name))


def test_folder_that_is_not_a_dataset_is_refused(tmp_path):
    os.makedirs(tmp_path / "junk")
    (tmp_path / "junk" / "readme.txt").write_text("not a dataset")
    with pytest.raises(InputError):
        load_corpus(str(tmp_path / "junk"))


def test_no_dataset_given():
    with pytest.raises(UserError):
        load_corpus("")


def test_tokenize_rows_truncates_ids_and_labels_together(files, tokenizer):
    corpus = load_corpus(files["jsonl"])
    docs = tokenize_rows(corpus, 0, 3, tokenizer, 4, "text", id_column="id")
    assert [d.doc_id for d in docs] == ["a", "b", "c"] and [d.index for d in docs] == [0, 1, 2]
    for d in docs:
        assert len(d.input_ids) <= 4 and d.labels == d.input_ids
    docs = tokenize_rows(corpus, 1, 3, tokenizer, 3, "text", "prompt", "completion")
    assert [d.doc_id for d in docs] == ["1", "2"]  # default ids: 0-based row numbers
    for d in docs:
        assert len(d.input_ids) == len(d.labels) <= 3
        assert d.labels[:2] == [-100, -100]  # [BOS] + one prompt word
