"""The command table (flows/commands/): every row is consistent with the flow it runs and the
deployment that serves that flow, and the CLI lists exactly the table."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import yaml

from flows.commands import BY_NAME, COMMANDS

SPEC = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def test_every_flow_command_runs_a_deployed_flow_on_its_config():
    entrypoints = {d["entrypoint"] for d in yaml.safe_load(SPEC.read_text())["deployments"]}
    for c in COMMANDS:
        if c.module:  # its own flags and steps
            mod = importlib.import_module(f"flows.commands.{c.module}")
            assert callable(mod.add_arguments) and callable(mod.run) and not c.config, c.name
            continue
        if c.launcher and not c.flow:  # a file conversion run in-process (export, import): no flow to deploy
            assert c.config is not None and set(c.positional) <= set(c.config.model_fields), c.name
            continue
        assert c.flow in entrypoints, c.name
        module, function = c.flow.split(":")
        flow = getattr(importlib.import_module(module), function)
        assert typing.get_type_hints(flow.fn)["config"] is c.config, c.name
        assert set(c.positional) <= set(c.config.model_fields), c.name
        assert c.preload is None or c.check is None, c.name


def test_the_cli_lists_the_table_in_order():
    from flows.cli import parser

    p, commands = parser()
    assert list(commands) == [c.name for c in COMMANDS] == list(BY_NAME)
    listed = [a for a in p._actions if a.dest == "command"][0].choices
    assert list(listed) == [c.name for c in COMMANDS]
    for c in COMMANDS:
        assert listed[c.name].description == c.help
