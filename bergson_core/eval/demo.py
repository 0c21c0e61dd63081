"""The embedded demo: a topical corpus generated on the spot and a tiny GPT-2 trained on it.

Everything is made locally and deterministically (no network): eight topics, documents written
from topic vocabularies and templates, one query per topic. After a build and a score, the top
documents of each query should come from the query's topic, which a person can judge at a glance.
"""

from __future__ import annotations

import json
import os
import random

import torch

TOPICS = {
    "cooking": ["chef", "oven", "garlic", "butter", "recipe", "soup", "pan", "flour", "salt", "bake"],
    "space": ["rocket", "orbit", "planet", "astronaut", "moon", "galaxy", "star", "telescope", "comet", "launch"],
    "ocean": ["whale", "coral", "reef", "tide", "shark", "wave", "sailor", "dolphin", "harbor", "salt water"],
    "music": ["guitar", "melody", "drum", "concert", "piano", "song", "chord", "singer", "rhythm", "band"],
    "football": ["goal", "striker", "referee", "pitch", "keeper", "match", "penalty", "coach", "team", "league"],
    "gardening": ["tomato", "soil", "seed", "compost", "rose", "shovel", "weed", "bloom", "garden", "harvest"],
    "computers": ["keyboard", "server", "code", "bug", "compiler", "memory", "laptop", "network", "disk", "program"],
    "weather": ["rain", "storm", "cloud", "thunder", "snow", "forecast", "wind", "sunshine", "fog", "umbrella"],
}
TEMPLATES = [
    "the {a} was next to the {b} .",
    "she talked about the {a} and the {b} all day .",
    "every morning the {a} meets the {b} .",
    "we saw a {a} near the {b} yesterday .",
    "he said the {a} is better than the {b} .",
    "nobody expected the {a} to help the {b} .",
]


def _sentence(rng: random.Random, words: list[str], template: str) -> str:
    a, b = rng.sample(words, 2)
    return template.format(a=a, b=b)


def make_corpus(docs_per_topic: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Documents (id, topic, text) and one query per topic."""
    rng = random.Random(seed)
    docs = []
    for topic, words in TOPICS.items():
        for j in range(docs_per_topic):
            text = " ".join(_sentence(rng, words, rng.choice(TEMPLATES)) for _ in range(rng.randint(2, 4)))
            docs.append({"id": f"{topic}-{j:03d}", "topic": topic, "text": text})
    rng.shuffle(docs)
    # queries are new sentences in the corpus' own style: only the topic words carry information
    queries = [{"topic": t, "text": _sentence(rng, w, rng.choice(TEMPLATES))} for t, w in TOPICS.items()]
    return docs, queries


def train_tiny(model, tokenizer, texts: list[str], steps: int = 600, batch: int = 16, lr: float = 3e-3,
               seed: int = 0, log=None):
    """A few hundred AdamW steps of next-token training, enough to make topics matter."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    enc = [tokenizer(t)["input_ids"] for t in texts]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        rows = [enc[i] for i in rng.sample(range(len(enc)), batch)]
        width = max(map(len, rows))
        ids = torch.zeros(batch, width, dtype=torch.long)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            labels[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(step, loss.item())
    model.eval()
    return model


def prepare_demo(workdir: str, log=None) -> dict:
    """Write corpus.jsonl, queries.jsonl and a trained tiny model under workdir (once)."""
    from ..model.tiny import tiny_model, train_tokenizer

    paths = {
        "corpus": os.path.join(workdir, "corpus.jsonl"),
        "queries": os.path.join(workdir, "queries.jsonl"),
        "model": os.path.join(workdir, "model"),
        "index": os.path.join(workdir, "index"),
    }
    if os.path.exists(os.path.join(paths["model"], "config.json")):
        return paths
    os.makedirs(workdir, exist_ok=True)
    docs, queries = make_corpus()
    for path, rows in ((paths["corpus"], docs), (paths["queries"], queries)):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [d["text"] for d in docs]
    tok = train_tokenizer(texts + [q["text"] for q in queries])
    model = tiny_model("gpt2", len(tok), seed=0, hidden=64, layers=2, heads=4)
    train_tiny(model, tok, texts, log=log)
    tmp = paths["model"] + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, paths["model"])  # the model folder appears whole or not at all
    return paths


def topic_precision(rows: list[dict], corpus_path: str, queries_path: str) -> tuple[int, int]:
    """How many retrieved documents share their query's topic: (hits, retrieved)."""
    docs = [json.loads(line) for line in open(corpus_path)]
    queries = [json.loads(line) for line in open(queries_path)]
    hits = sum(docs[r["doc_index"]]["topic"] == queries[r["query_index"]]["topic"] for r in rows)
    return hits, len(rows)
