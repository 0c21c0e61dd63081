"""Every strategy is one file in curvature/strategies/ that registers itself under its file name
and declares the statistic pass it needs, with a way to compute it (model passes or stored rows)."""

import importlib
import pkgutil

from bergson_core import curvature as C
from bergson_core.config.curvature import STRATEGY_NAMES
from bergson_core.curvature import strategies


def test_one_file_per_strategy_registered_under_its_name():
    files = sorted(m.name for m in pkgutil.iter_modules(strategies.__path__))
    assert files == sorted(STRATEGY_NAMES) == sorted(C.STRATEGIES)
    for name in files:
        module = importlib.import_module(f"{strategies.__name__}.{name}")
        assert type(C.STRATEGIES[name]).__module__ == module.__name__


def test_each_first_pass_can_be_computed():
    for name, strategy in C.STRATEGIES.items():
        kind = strategy.first_pass
        if kind is None:
            assert not strategy.needs, name
            continue
        owner = C.get_strategy(kind)
        assert owner.has_model_stats() or owner.has_rows_stats(), name
    shampoo = C.get_strategy("shampoo")  # its passes live in its own file
    assert shampoo.has_model_stats() and shampoo.has_rows_stats()
    assert C.shampoo_partial_stats.__module__.endswith("strategies.shampoo")
