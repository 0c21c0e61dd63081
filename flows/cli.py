"""`bergson`: the command line front door. Its subcommands are the rows of flows/commands/ (COMMANDS).

A user error (bad option, missing file, mismatched index) is printed as one line on stderr with
exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from bergson_core.errors import UserError

from .commands import COMMANDS
from .startup import quiet_prefect


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; a user mistake is one line here, like every
    other (the subcommand parsers inherit this class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser() -> tuple[argparse.ArgumentParser, dict]:
    p = OneLineParser(
        prog="bergson",
        description="Training-data attribution: which training documents drove a model's behaviour.",
    )
    p.add_argument("--verbose", action="store_true", help="Show Prefect's own logs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for command in COMMANDS:
        sp = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sp)
        commands[command.name] = command
    return p, commands


def main(argv: list[str] | None = None) -> int:
    p, commands = parser()
    args = p.parse_args(argv)
    quiet_prefect(args.__dict__.pop("verbose"))
    try:
        return commands[args.command].run(args)
    except UserError as e:
        print(f"bergson {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept and a rerun continues from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
