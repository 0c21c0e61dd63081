"""A synthetic facts corpus whose supporting documents are known by construction.

Each person (a first and a last name) has one value per attribute (birthplace, job, pet). Each fact
is written in several templates, one document each. The query of a fact is the first template cut
before the value, as prompt + completion (only the value carries loss): one supporting document
contains it word for word, the others are paraphrases, which is where methods differ. A query's
supporting documents are exactly the documents stating its fact, so retrieval can be scored with
recall@k and MRR, and the corpus is small enough to train a tiny model on 2 CPU cores.
(A tiny model trained from scratch does not transfer a fact to an unseen phrasing, so queries in a
held-out template would measure nothing but noise.)
"""

from __future__ import annotations

import random

FIRST_NAMES = [
    "alice", "bruno", "chloe", "dmitri", "elena", "farid", "greta", "hiro", "ines", "jonas", "kira", "luca",
    "maya", "nils", "olga", "pedro", "quinn", "rosa", "sami", "tara", "umar", "vera", "wen", "yusuf",
]
LAST_NAMES = [
    "archer", "baker", "castillo", "dubois", "eriksen", "fontaine", "garcia", "hansen", "ivanova", "jensen",
    "kowalski", "lindqvist", "moreau", "novak", "okafor", "petrov", "quist", "rossi", "silva", "tanaka",
]

ATTRIBUTES = {
    "city": {
        "values": ["paris", "tokyo", "lagos", "lima", "oslo", "cairo", "delhi", "quito", "perth", "seoul"],
        "templates": ["{name} was born in {value} .", "the home town of {name} is {value} .",
                      "{name} grew up in the city of {value} ."],
    },
    "job": {
        "values": ["doctor", "pilot", "farmer", "lawyer", "painter", "nurse", "chemist", "plumber", "teacher",
                   "sailor"],
        "templates": ["{name} works as a {value} .", "by profession {name} is a {value} .",
                      "{name} earns a living as a {value} ."],
    },
    "pet": {
        "values": ["parrot", "hamster", "rabbit", "turtle", "goat", "pony", "ferret", "lizard", "goldfish",
                   "spider"],
        "templates": ["the pet of {name} is a {value} .", "{name} keeps a {value} at home .",
                      "{name} feeds a {value} every day ."],
    },
}


def make_facts(num_people: int = 24, attributes: tuple[str, ...] = ("city", "job", "pet"),
               templates_per_fact: int = 3, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Documents {id, text, person, attribute, value} (shuffled) and queries {id, prompt, completion,
    support_ids, person, attribute, value}, one query per (person, attribute)."""
    rng = random.Random(seed)
    pairs = [(f, la) for f in FIRST_NAMES for la in LAST_NAMES]
    if num_people > len(pairs):
        raise ValueError(f"at most {len(pairs)} people")
    people = [f"{f} {la}" for f, la in rng.sample(pairs, num_people)]
    docs, queries = [], []
    for p, name in enumerate(people):
        for attr in attributes:
            spec = ATTRIBUTES[attr]
            value = rng.choice(spec["values"])
            support = []
            for t, template in enumerate(spec["templates"][:templates_per_fact]):
                doc_id = f"p{p:03d}-{attr}-t{t}"
                docs.append({"id": doc_id, "text": template.format(name=name, value=value), "person": name,
                             "attribute": attr, "value": value})
                support.append(doc_id)
            prompt = spec["templates"][0].split("{value}")[0].strip()
            queries.append({"id": f"p{p:03d}-{attr}", "prompt": prompt.format(name=name),
                            "completion": value, "support_ids": support,
                            "person": name, "attribute": attr, "value": value})
    rng.shuffle(docs)
    return docs, queries
