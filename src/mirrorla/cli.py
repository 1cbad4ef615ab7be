"""The ``mirrorla`` command line. Subcommands register themselves in :data:`COMMANDS`.

Each entry maps a name to ``(add_arguments(parser), run(args) -> int, help)``; modules that add a
subcommand do it with :func:`command` so this file stays small.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["main", "command"]

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    """Decorator for ``add_arguments``; the decorated function returns the ``run`` callable."""

    def deco(add_arguments):
        def register(run):
            if name in COMMANDS:
                raise ValueError(f"command {name!r} registered twice")
            COMMANDS[name] = (add_arguments, run, help)
            return run

        return register

    return deco


def _load_commands() -> None:
    import importlib

    for module in _COMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # an optional part whose dependency is missing
            if err.name and err.name.startswith("mirrorla"):
                raise


# Modules that define subcommands (each calls ``command`` at import time).
_COMMAND_MODULES = [
    "mirrorla.demo",
    "mirrorla.train_cli",
    "mirrorla.bench.cli",
    "mirrorla.still.cli",
    "mirrorla.models.commands",
]


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    from mirrorla import __version__

    parser = argparse.ArgumentParser(
        prog="mirrorla",
        description="Linear attention for vision transformers: MirrorLA and its peers behind one API.",
    )
    parser.add_argument("--version", action="version", version=f"mirrorla {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, run, help_text) in sorted(COMMANDS.items()):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    # Commands register on the module ``mirrorla.cli``; run as ``python -m mirrorla.cli`` this file is
    # ``__main__``, a second copy without them, so hand over to the imported module.
    from mirrorla import cli as _cli

    sys.exit(_cli.main())
