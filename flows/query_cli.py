"""How `bergson query` runs (its entry in flows/commands/). With --text or --queries: one flow run,
the model loaded while Prefect starts. Without them, prompts come from standard input, one per
line, each answered as it arrives by one engine (one model load) in this process: a flow run per
line would add the orchestrator's latency to every answer; only a FAISS build, when one is
needed, runs as a flow."""

from __future__ import annotations

import sys

from bergson_core.config.query import QueryConfig

from .startup import overlapped


def launch_query(cfg: QueryConfig) -> dict:
    from bergson_core.scoring.query import QueryEngine

    cfg.check()
    if cfg.text or cfg.queries:
        overlapped(lambda: QueryEngine(cfg))  # validation and model load while Prefect starts
        from .query import query

        return query(cfg)
    if cfg.faiss:
        engine = overlapped(lambda: QueryEngine(cfg))
        from .faiss_index import build_faiss

        build_faiss(cfg)
        engine.open_faiss()
    else:  # exact answers need no orchestrator at all
        engine = QueryEngine(cfg)
    return answer_stdin(engine, sys.stdin)


def answer_stdin(engine, stream) -> dict:
    """Answer each line of `stream`, printing each answer; a prompt marker when it is a terminal."""
    from bergson_core.scoring.query import answer_lines

    from .commands.show import query as render

    tty = stream.isatty()
    if tty:
        print("one prompt per line; Ctrl-D ends", file=sys.stderr)
    n = answer_lines(engine, stream, render, (lambda: print("query> ", end="", flush=True, file=sys.stderr))
                     if tty else None)
    return {"answered": n}
