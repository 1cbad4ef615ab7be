"""The command line as a new user meets it: help text, errors in one line, no torch for ``--help``."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mirrorla.cli import build_parser, main
from mirrorla.commands import Command, HelpFormatter

SRC = Path(__file__).resolve().parents[1] / "src"


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "mirrorla"):
    """(name, parser) of every subcommand, nested ones (``bench ops``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def test_every_option_has_help_and_one_default():
    parsers = list(_subparsers(build_parser()))
    assert {"mirrorla train", "mirrorla compare", "mirrorla bench ops", "mirrorla flops"} <= {n for n, _ in parsers}
    for name, parser in parsers:
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help is not argparse.SUPPRESS, (name, action.option_strings)
            text = formatter._expand_help(action)
            assert text.count("default") <= 1, (name, action.option_strings, text)
            assert "(default: None)" not in text and "(default: True)" not in text, (name, text)
            if any(flag.startswith("--no-") for flag in action.option_strings):  # --x/--no-x says which is on
                assert isinstance(action, argparse.BooleanOptionalAction), (name, action.option_strings)
        assert "{'seeds'" not in parser.format_help()  # presets in words, not a dict


def test_compare_offers_every_training_option_of_train():
    def options(name):
        sub = dict(_subparsers(build_parser()))[f"mirrorla {name}"]
        return {flag for action in sub._actions for flag in action.option_strings}

    train, compare = options("train"), options("compare")
    own = {"--attention", "--seed", "--resume", "--out", "--overwrite", "--checkpoints", "--no-checkpoints",
           "--keep-checkpoints", "--json"}  # fmt: skip
    assert train - own <= compare, sorted(train - own - compare)
    assert {"--attn-opt", "--amp", "--weight-decay", "--mlp-ratio", "--seeds", "--quick"} <= compare


def test_building_the_parser_imports_no_torch():
    """The command modules import no torch: ``mirrorla --help`` need not pay for it.

    The packages ``mirrorla`` and ``mirrorla.engine`` are stood in for by empty ones, so that this checks the
    command line's own modules (their ``__init__`` files import the library, torch included)."""
    code = (
        "import sys, types\n"
        f"for name, path in (('mirrorla', {str(SRC / 'mirrorla')!r}), "
        f"('mirrorla.engine', {str(SRC / 'mirrorla' / 'engine')!r})):\n"
        "    m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m\n"
        "import mirrorla.commands\n"
        "mirrorla.commands.build_parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'timm', 'numpy', 'tqdm', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_imports_no_torch():
    code = "import sys, mirrorla.cli; mirrorla.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(rf"mirrorla {command}: error: ", err), err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--dim", "30", "--heads", "4"], "multiple of --heads 4"),
        (["demo", "--attentions", "foo"], "unknown attention 'foo'"),
        (["demo", "--grid", "0"], "argument --grid"),
        (["compare", "--seeds", "a"], "argument --seeds"),
        (["compare", "--epochs", "0"], "argument --epochs"),
        (["compare", "--train-subset", "0"], "argument --train-subset"),
        (["train", "--train-subset", "0"], "argument --train-subset"),
        (["train", "--attn-opt", "bogus=1"], "has no option 'bogus'"),
        (["train", "--attention", "mirror", "--attn-opt", "num_prefix_tokens=0"], "sets num_prefix_tokens"),
        (["train", "--attn-opt", "alpha_init"], "KEY=VALUE"),
        (["eval", "run", "--eval-subset", "0"], "argument --eval-subset"),
        (["eval", "run", "--batch-size", "0"], "argument --batch-size"),
        (["compare", "--jobs", "x"], "--jobs"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, expected):
    assert main(argv) == 2
    err = _one_line_error(capsys, argv[0])
    assert expected in err, err


@pytest.mark.parametrize("argv", [["train"], ["compare"], ["bench", "ops"]])
def test_out_that_is_a_file_is_one_line(tmp_path, capsys, argv):
    path = tmp_path / "a-file"
    path.write_text("")
    assert main([*argv, "--out", str(path)]) == 2
    assert str(path) in _one_line_error(capsys, argv[0]) and path.read_text() == ""


def test_flops_names_the_patch_size(capsys):
    assert main(["flops", "deit_tiny_mirror", "--img-size", "100", "--no-progress"]) == 2
    err = _one_line_error(capsys, "flops")
    assert "--img-size 100" in err and "multiple of 16" in err


def test_flops_shows_progress_on_stderr(capsys):
    assert main(["flops", "deit_tiny_mirror", "--img-size", "32"]) == 0
    assert "| `deit_tiny_mirror` |" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["linearize", "lm-eval"])
def test_llm_commands_without_the_extra(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    argv = [command, "--model", str(tmp_path), "--data", str(tmp_path)]
    assert main(argv + (["--out", str(tmp_path / "out")] if command == "linearize" else [])) == 2
    err = _one_line_error(capsys, command)
    assert "transformers" in err and 'pip install "mirrorla[llm]"' in err


def test_list_says_where_the_models_are(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mirror" in out and "mirrorla models" in out


def test_genuine_bugs_keep_their_traceback(monkeypatch):
    from mirrorla.commands import demo

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(demo, "COMMANDS", [Command("demo", "x", demo._add_demo_args, broken), demo.COMMANDS[1]])
    with pytest.raises(KeyError, match="a bug"):
        main(["demo"])


def test_bench_writes_under_runs_by_default():
    sub = dict(_subparsers(build_parser()))
    from mirrorla.commands.options import preset_out

    assert preset_out(sub["mirrorla bench ops"].parse_args([])) == "runs/bench"
    assert preset_out(sub["mirrorla bench ops"].parse_args(["--quick"])) == "runs/bench-quick"
    gitignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "runs/" in gitignore
