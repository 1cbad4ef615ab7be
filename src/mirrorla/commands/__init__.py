"""The ``mirrorla`` command line: one module per command family, built from shared option groups.

Each module in :data:`COMMAND_MODULES` lists its :class:`Command` objects in ``COMMANDS``. Building
the parser imports those modules and nothing heavier: their ``add_arguments`` read defaults from
torch-free modules (:mod:`mirrorla.engine.config`), and each ``run`` imports torch, timm and the
engine when the command runs, so ``mirrorla --help`` answers at once.

Errors. A command reports bad input by raising :class:`UsageError` (or, for ``train``, ``eval`` and
``compare``, the library's validation errors, which those commands turn into a ``UsageError``):
:func:`main` prints it as one line, ``mirrorla <command>: error: <message>``, and returns 2, as
argparse does for a malformed option. :class:`Interrupted` (Ctrl-C with a word on what was saved and
how to continue) prints one line and returns 130. A write error the user can fix (disk full, read-only file
system, no permission) prints one line naming the path and returns 2. A missing optional package (``matplotlib``
of the ``train`` extra, ...) prints one line naming the extra that installs it (:data:`OPTIONAL_PACKAGES`).
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "Interrupted", "UsageError", "build_parser", "command_family", "main", "COMMAND_MODULES"]


class UsageError(Exception):
    """Bad command-line input; :func:`main` prints it as one line and exits with status 2."""


class Interrupted(Exception):
    """Ctrl-C; the message says what was saved and the command that continues. Exit status 130."""


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its options, ``run(args) -> int`` does the work."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: Modules with a ``COMMANDS`` list. Importing them must not import torch (see the module docstring).
COMMAND_MODULES = (
    "mirrorla.commands.demo",
    "mirrorla.commands.train",
    "mirrorla.commands.compare",
    "mirrorla.commands.bench",
    "mirrorla.commands.still",
    "mirrorla.commands.models",
    "mirrorla.commands.sr",
    "mirrorla.commands.lra",
    "mirrorla.commands.analyze",
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once: appended as ``(default: X)`` unless the help already says it,
    and never for a default of None, False or no default (an option that is off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction):  # --x/--no-x: say which one is the default
            text = text.replace(" (default: %(default)s)", "")  # what some Python versions add
            if isinstance(default, bool) and "default" not in text:
                text += f" (default: {'on' if default else 'off'})"
            return text
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or not action.option_strings
            or isinstance(action, argparse._StoreConstAction)  # --quick: the constant is not a default
        ):
            return text
        return f"{text} (default: %(default)s)"


#: A subcommand of a command family: (help, add_arguments, run).
Subcommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def command_family(name: str, help: str, subcommands: dict[str, Subcommand]) -> Command:
    """A command whose work is one of several subcommands (``mirrorla sr train``, ``mirrorla lra compare``)."""

    def add_arguments(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest=f"{name}_what", metavar="{" + ",".join(subcommands) + "}", required=True)
        for sub_name, (sub_help, add, run) in subcommands.items():
            s = sub.add_parser(sub_name, help=sub_help, description=sub_help, formatter_class=HelpFormatter)
            add(s)
            s.set_defaults(_family_run=run, _prog=s.prog)

    def run(args: argparse.Namespace) -> int:
        return args._family_run(args)

    return Command(name, help, add_arguments, run)


def _commands() -> list[Command]:
    commands: list[Command] = []
    for module in COMMAND_MODULES:
        commands += importlib.import_module(module).COMMANDS
    names = [c.name for c in commands]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"commands registered twice: {duplicates}")
    return commands


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mirrorla")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


#: The optional packages a command may import, and the extra of pyproject.toml that installs each.
OPTIONAL_PACKAGES = {
    "matplotlib": "train", "safetensors": "train", "skimage": "sr", "sklearn": "sr", "transformers": "llm",
    "peft": "llm",
}  # fmt: skip


def missing_extra_message(module: str, extra: str) -> str:
    """The one line that names a missing optional package and how to install its extra."""
    package = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(module.split(".")[0], module.split(".")[0])
    return (
        f'this command needs {package}, which is not installed: pip install -e ".[{extra}]" in a clone of '
        f'mirrorla, or pip install "mirrorla[{extra}]"'
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="mirrorla",
        description="Linear attention for vision transformers: MirrorLA and its peers behind one API.",
    )
    parser.add_argument("--version", action="version", version=f"mirrorla {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in sorted(_commands(), key=lambda c: c.name):
        p = sub.add_parser(command.name, help=command.help, description=command.help, formatter_class=HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(_run=command.run, _prog=p.prog)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad input, 130: interrupted)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or argparse's own one-line error (already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    args._argv = argv
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"{args._prog}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except ModuleNotFoundError as err:  # an optional extra is not installed: one line naming it
        extra = OPTIONAL_PACKAGES.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"{args._prog}: error: {missing_extra_message(err.name, extra)}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as err:
        print(f"{args._prog}: {err}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`mirrorla list | head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except OSError as err:  # a write error the user can fix (disk full, read-only, permission), in any command
        from mirrorla.engine.checkpoint import output_write_error

        explained = output_write_error(err)
        if explained is None:
            raise
        print(f"{args._prog}: error: {explained}", file=sys.stderr, flush=True)
        return 2
