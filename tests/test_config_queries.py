"""The query set's options are one block (bergson_core.config.base) mixed into every config that
reads queries, with one fallback rule for unset query columns."""

from __future__ import annotations

import pytest

from bergson_core.config import QUERY_FIELDS, BuildConfig, QuerySet, ScoreConfig
from bergson_core.config.curvature import EkfacConfig, FitConfig, TrackstarConfig
from bergson_core.config.dynamics import MagicConfig, TracInConfig
from bergson_core.config.eval import ValidateConfig
from bergson_core.config.source import SourceConfig

CONFIGS = (ScoreConfig, FitConfig, TrackstarConfig, EkfacConfig, TracInConfig, MagicConfig, SourceConfig,
           ValidateConfig)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_query_config_takes_the_one_block(config):
    assert issubclass(config, QuerySet)
    assert set(QUERY_FIELDS) <= set(config.model_fields)
    for name in QUERY_FIELDS:  # declared by the block only, never again by a config
        owners = [k for k in config.__mro__ if name in vars(k).get("__annotations__", {})]
        assert len(owners) == 1 and owners[0].__base__ is QuerySet, (name, owners)
    assert config.model_fields["query_split"].default == "train"
    assert config.model_fields["query_text_column"].default is None
    assert config.model_fields["queries"].is_required() == (config is not FitConfig)


def test_unset_query_columns_fall_back_to_the_corpus_or_the_index():
    recipe = dict(bank="b", model="m", dataset="d", queries="q", text_column="body", prompt_column="p",
                  completion_column="c")
    assert ValidateConfig(**recipe).query_columns() == ("body", "p", "c")
    assert ValidateConfig(**recipe, query_prompt_column="qp").query_columns() == ("body", "qp", "c")
    index = BuildConfig(index="i", text_column="t", prompt_column="ip", completion_column="ic")
    assert ScoreConfig(index="i", queries="q").query_columns(index) == ("t", "ip", "ic")
    assert ScoreConfig(index="i", queries="q", query_text_column="x").query_columns(index) == ("x", "ip", "ic")
    tracin = TracInConfig(indexes=["a"], queries="q", output="o", query_split="test")
    assert tracin.query_fields() == {"queries": "q", "query_text_column": None, "query_prompt_column": None,
                                     "query_completion_column": None, "query_split": "test"}


def test_help_says_what_an_unset_column_falls_back_to():
    assert ScoreConfig.model_fields["query_text_column"].description == "Query text column (default: the index's)."
    assert TracInConfig.model_fields["query_prompt_column"].description == \
        "Query prompt column (default: the indexes')."
    assert MagicConfig.model_fields["query_completion_column"].description == \
        "Query completion column (default: --completion-column); only its tokens carry loss."
