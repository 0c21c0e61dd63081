"""Prefect artifacts: what a person sees in the dashboard. Keys: lowercase letters, digits, dashes."""

from __future__ import annotations

import re

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class Progress:
    """A progress artifact updated as shards finish."""

    def __init__(self, key: str, total: int, description: str):
        self.total, self.done = max(total, 1), 0
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)

    def step(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(artifact_id=self.id, progress=100.0 * self.done / self.total)


def markdown(key: str, text: str, description: str) -> None:
    create_markdown_artifact(markdown=text, key=key, description=description)


def table(key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(table=rows, key=key, description=description)


def link(key: str, url: str, description: str) -> None:
    """A link to an output (file:// for local paths, the URL itself for s3:// and the like)."""
    import os

    target = url if "://" in url else "file://" + os.path.abspath(url)
    create_link_artifact(key=key, link=target, link_text=url, description=description)
