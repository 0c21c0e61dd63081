"""CLI flags generated from the pydantic config, so a flag, a YAML key and a flow parameter are
the same thing. Precedence: defaults < --config YAML file < flags on the command line."""

from __future__ import annotations

import argparse
import json
import os
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from bergson_core.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation):
    """Strip Optional[...] and return (type, is_optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel], positional: tuple[str, ...] = ()):
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of these options.")
    for name, field in model.model_fields.items():
        help_text = field.description or ""
        if name in positional:
            parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=help_text)
            continue
        kind, _ = _base_type(field.annotation)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
        if field.is_required():
            help_text += " (required)"
        else:
            default = field.get_default(call_default_factory=True)
            if default not in (None, "", [], {}):
                help_text += f" (default: {default})"
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", metavar=name.upper())
        elif typing.get_origin(kind) is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        elif typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            kwargs.update(choices=choices, metavar="{" + ",".join(map(str, choices)) + "}")
        elif kind in (int, float):
            kwargs["type"] = kind
        parser.add_argument(_flag(name), help=help_text, **kwargs)


def load_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(model: type[BaseModel], args: argparse.Namespace, **overrides) -> BaseModel:
    """Merge defaults, the YAML file and the flags; turn validation errors into one line."""
    values = vars(args).copy()
    config_file = values.pop("config", None)
    values.pop("command", None)
    merged = load_yaml(config_file) if config_file else {}
    merged.update(values)
    merged.update(overrides)
    return validate(model, merged)


def validate(model: type[BaseModel], values: dict) -> BaseModel:
    try:
        return model(**values)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            if err["type"] == "missing":
                parts.append(f"{_flag(where) if where != 'index' else 'INDEX'} is required")
            elif err["type"] == "extra_forbidden":
                parts.append(f"unknown option {where!r}")
            else:
                parts.append(f"{_flag(where)}: {err['msg']}")
        raise ConfigError("; ".join(parts)) from None
