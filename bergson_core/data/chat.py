"""Chat transcripts as documents: the tokenizer's chat template renders them, and only the
assistant's tokens carry loss.

The assistant spans come from the template itself, so any template works that renders a
conversation prefix by prefix (ChatML, Llama, Mistral, Gemma, ... do): for assistant message i, the
text of messages[:i] with the generation prompt ends where the reply begins, and the text of
messages[:i+1] ends where its turn ends (end-of-turn marker included: the model must learn to stop).
A token carries loss when its first character lies in such a span.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError


def check_chat_template(tokenizer, model: str = "the model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"the tokenizer of {model} has no chat template, so --conversation-column cannot be "
                         "rendered: use a chat model's tokenizer, or give text / prompt + completion columns")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"the tokenizer of {model} is not a fast tokenizer (no character offsets), so "
                         "--conversation-column cannot find the assistant's tokens: use a fast tokenizer")


def check_conversations(dataset, column: str, uri: str) -> None:
    """Every row of `column` is a list of {role, content} messages with text values (Arrow-level, so
    a whole corpus is checked before anything is written)."""
    arr = dataset.data.column(column).combine_chunks()
    fix = f"each row of {column!r} must be a list of {{\"role\": ..., \"content\": ...}} messages"
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise InputError(f"{uri}: column {column!r} holds {arr.type}, not lists of messages: {fix}")
    msgs = arr.flatten()  # the messages of all rows, one after another
    names = [msgs.type.field(i).name for i in range(msgs.type.num_fields)] if pa.types.is_struct(msgs.type) else []
    if "role" not in names or "content" not in names:
        raise InputError(f"{uri}: the messages of column {column!r} have no role and content keys: {fix}")
    for key in ("role", "content"):
        if not pa.types.is_string(msgs.field(key).type) and not pa.types.is_large_string(msgs.field(key).type):
            raise InputError(f"{uri}: {key} of column {column!r} holds {msgs.field(key).type}, not text: {fix}")
    if arr.null_count:
        raise InputError(f"{uri} row {_first(arr.is_null())}: column {column!r} is empty: {fix}")
    bad = pc.or_(pc.is_null(msgs.field("role")), pc.is_null(msgs.field("content")))
    if pc.any(bad).as_py():
        row = pc.list_parent_indices(arr)[_first(bad)].as_py()
        raise InputError(f"{uri} row {row}: a message of column {column!r} lacks a role or content: {fix}")


def _first(mask) -> int:
    return pc.index(mask, True).as_py()


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of the assistant's turns."""
    try:
        text = _render(tokenizer, messages)
        spans = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
            through = _render(tokenizer, messages[: i + 1])
            if not (text.startswith(before) and text.startswith(through) and len(before) < len(through)):
                raise InputError("the tokenizer's chat template does not render a conversation prefix by prefix, "
                                 "so the assistant's tokens cannot be found: use a template that does")
            spans.append((len(before), len(through)))
    except InputError:
        raise
    except Exception as e:  # jinja's own errors (raise_exception in the template, bad roles)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"the chat template refused a conversation: {first}") from e
    return text, spans


def chat_tokens(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are -100 outside the assistant's turns."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_length]
    labels = [t if any(s <= off[0] < e for s, e in spans) else -100
              for t, off in zip(ids, enc["offset_mapping"])]
    return ids, labels
