"""One module per `bergson` subcommand. Each defines NAME, HELP, add_arguments(parser) and
run(args) -> exit code; the CLI discovers them here, so a new command is a new file."""

import importlib
import pkgutil


def discover() -> list:
    mods = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: getattr(m, "ORDER", 100))
