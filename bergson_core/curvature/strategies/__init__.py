"""The preconditioner strategies, one module each; importing this package imports them all, and
each module's Strategy subclass registers itself (curvature/strategy.py). The CLI's --strategy
choices are these file names (config/curvature.py reads them without importing torch), so a new
strategy is one new file here plus its test.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
