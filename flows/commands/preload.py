"""What each command checks and loads while Prefect starts (the `preload` column of the command
table): a user error surfaces at once, and the flow's tasks find the model and data in the
per-process caches. Each imports torch inside the function, so the API server starts first."""

from __future__ import annotations


def score(cfg) -> None:
    from bergson_core.scoring.run import ensure_query_gradients, preconditioner_transforms

    preconditioner_transforms(cfg)  # a preconditioner of another projection is refused at once
    ensure_query_gradients(cfg)  # query gradients while Prefect starts


def plan(cfg) -> None:
    from bergson_core.index.build import prepare_build

    prepare_build(cfg, write=False)  # validation and the model, as the build's own


def fit(cfg) -> None:
    from bergson_core.curvature.run import plan_fit
    from bergson_core.scoring.run import ensure_query_gradients

    cfg.source()
    if cfg.queries:
        ensure_query_gradients(cfg.query_score_config())
    plan_fit(cfg)


def trackstar(cfg) -> None:  # model, corpus, optimizer state, query columns
    from bergson_core.curvature.run import check_queries
    from bergson_core.index.build import prepare_build

    prepare_build(cfg.build_config(), write=False)
    check_queries(cfg)


def ekfac(cfg) -> None:
    from bergson_core.curvature.run import check_queries, ekfac_mode
    from bergson_core.index.build import prepare_build

    prepare_build(cfg.build_config(ekfac_mode(cfg)), write=False)
    check_queries(cfg)


def validate(cfg) -> None:
    from bergson_core.eval.retrain import prepare_bank

    prepare_bank(cfg, write=False)


def recall(cfg) -> None:
    """Torch-free checks of the score files and the queries' support column."""
    from bergson_core.errors import ConfigError
    from bergson_core.eval.evaluate import read_support
    from bergson_core.eval.scores import resolve_score_file

    if not cfg.scores:
        raise ConfigError("give at least one score file: --scores FILE [FILE ...]")
    for s in cfg.scores:
        resolve_score_file(s, cfg.storage_options)
    read_support(cfg.queries, cfg.support_column, cfg.storage_options)


def tracin(cfg) -> None:
    from bergson_core.methods.tracin.run import learning_rates, open_indexes

    _, metas = open_indexes(cfg)
    learning_rates(cfg, metas)


def magic(cfg) -> None:
    from bergson_core.methods.magic.run import load_recipe

    load_recipe(cfg)


def source(cfg) -> None:
    from bergson_core.methods.source.run import plan_source

    plan_source(cfg)


def trak(cfg) -> None:
    from bergson_core.methods.trak.run import open_indexes

    open_indexes(cfg)


def second_order(cfg) -> None:  # LiSSA, Arnoldi: the index, its model, corpus and query columns
    from bergson_core.methods.hessian.run import _setup

    _setup(cfg)
