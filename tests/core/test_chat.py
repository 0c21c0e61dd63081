"""Chat transcripts: rendered with the tokenizer's chat template, only the assistant's tokens carry
loss (checked against labels assembled piece by piece for two template styles), gradients equal
per-document autograd in float64, and bad input is one line with nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bergson_core.config import BuildConfig
from bergson_core.data.corpus import tokenize_rows
from bergson_core.errors import UserError
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.index.build import build_shard, prepare_build
from bergson_core.index.store import Index, grad_matrix
from bergson_core.model.loading import clear_cache
from bergson_core.model.tiny import tiny_model, train_tokenizer

from .helpers import TEXTS, corpus_from_rows, grad_options, make_loaded, reference_gradients, write_jsonl

SPECIALS = ["<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "</s>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
         "{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}"
         "{% else %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "on the mat"}],
    [{"role": "user", "content": "birds sing"}, {"role": "assistant", "content": "stars shine"},
     {"role": "user", "content": "we read books"}, {"role": "assistant", "content": "the sun rises at noon"}],
    [{"role": "user", "content": "a dog ran in the park"}, {"role": "assistant", "content": "the cat ran after it"}],
]


def chat_tokenizer(template: str | None):
    tok = train_tokenizer(TEXTS + ["user assistant system"])
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.eos_token = "</s>"
    tok.chat_template = template
    return tok


def expected(tok, style: str, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids and labels assembled piece by piece: (text, carries loss) as each template writes a turn."""
    pieces = [] if style == "chatml" else [(tok.bos_token, False)]
    for m in messages:
        mine = m["role"] == "assistant"
        if style == "chatml":
            pieces += [("<|im_start|>", False), (m["role"], False), (m["content"], mine), ("<|im_end|>", mine)]
        elif mine:
            pieces += [(m["content"], True), ("</s>", True)]
        else:
            pieces += [("[INST]", False), (m["content"], False), ("[/INST]", False)]
    ids, labels = [], []
    for text, loss in pieces:
        part = tok(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if loss else [-100] * len(part)
    return ids, labels


@pytest.mark.parametrize("style", ["chatml", "llama"])
def test_only_assistant_tokens_carry_loss(style):
    tok = chat_tokenizer(CHATML if style == "chatml" else LLAMA)
    docs = tokenize_rows(corpus_from_rows({"messages": CONVERSATIONS}), 0, 3, tok, 512,
                         conversation_column="messages")
    for doc, conv in zip(docs, CONVERSATIONS):
        ids, labels = expected(tok, style, conv)
        assert tok.unk_token_id not in ids
        assert (doc.input_ids, doc.labels) == (ids, labels)
    short = tokenize_rows(corpus_from_rows({"messages": CONVERSATIONS}), 1, 2, tok, 7, conversation_column="messages")
    assert short[0].input_ids == docs[1].input_ids[:7] and short[0].labels == docs[1].labels[:7]


def test_chat_gradients_match_autograd():
    tok = chat_tokenizer(CHATML)
    loaded = make_loaded("llama", tok)
    docs = tokenize_rows(corpus_from_rows({"messages": CONVERSATIONS}), 0, 3, tok, 512,
                         conversation_column="messages")
    opts = grad_options()
    modules = tracked_modules(loaded, opts)
    got, stats = compute_gradients(loaded, modules, docs, opts, batch_tokens=100_000)
    want = reference_gradients(loaded, modules, docs)
    assert stats.empty == 0 and np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def save_chat_model(path, template: str | None) -> str:
    tok = chat_tokenizer(template)
    tiny_model("llama", len(tok), hidden=16, layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_build_stores_the_chat_gradients(tmp_path):
    model = save_chat_model(tmp_path / "m", CHATML)
    data = write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cfg = BuildConfig(model=model, dataset=data, index=str(tmp_path / "index"), device="cpu", dtype="float64",
                      devices="cpu:1", projection_dim=0, grad_dtype="float32", conversation_column="messages")
    clear_cache()
    plan = prepare_build(cfg)
    build_shard(cfg, 0, 0, 3)
    stored = grad_matrix(Index(cfg.index).open_shard(0))
    clear_cache()
    assert plan.meta["spec"]["conversation_column"] == "messages"
    loaded = make_loaded("llama", chat_tokenizer(CHATML))
    docs = tokenize_rows(corpus_from_rows({"messages": CONVERSATIONS}), 0, 3, loaded.tokenizer, 512,
                         conversation_column="messages")
    want = reference_gradients(loaded, tracked_modules(loaded, cfg), docs)
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())  # stored as float32


BAD_ROWS = {
    "no chat template": [{"messages": CONVERSATIONS[0]}],
    "message without content": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}],
    "not a list": [{"messages": "hello there"}],
    "content not text": [{"messages": [{"role": "user", "content": 3}]}],
    "empty row": [{"messages": CONVERSATIONS[0]}, {"messages": None}],
    "column missing": [{"text": "the cat sat"}],
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_conversations_are_one_line_errors(tmp_path, case):
    model = save_chat_model(tmp_path / "m", None if case == "no chat template" else CHATML)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BAD_ROWS[case]))
    cfg = BuildConfig(model=model, dataset=str(path), index=str(tmp_path / "index"), device="cpu",
                      conversation_column="messages")
    clear_cache()
    with pytest.raises(UserError) as e:
        prepare_build(cfg)
    clear_cache()
    msg = str(e.value)
    assert "\n" not in msg and ("chat template" in msg if case == "no chat template" else "messages" in msg), msg
    assert not os.path.exists(cfg.index)
