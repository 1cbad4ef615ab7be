"""Facts the docs state about the code are the code's: the registered tasks, and training.md's ``eval --ema``
example works on the run that the doc's own train command makes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from helpers import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_name_the_registered_tasks():
    from mirrorla.tasks import list_tasks

    tasks = list_tasks()
    assert f"`list_tasks()` (`{tasks!r}`)" in (ROOT / "docs" / "api.md").read_text()
    training = " ".join((ROOT / "docs" / "training.md").read_text().split())
    assert "from `list_tasks()`: " + ", ".join(f'`"{t}"`' for t in tasks) + ")" in training


def _commands(doc: str, start: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(start)]


def _json_flag(args: list[str]) -> list[str]:
    """``--json`` where the command has it (its default output may be a line for people)."""
    from mirrorla.cli import build_parser

    try:
        build_parser().parse_args([*args, "--json"])
    except SystemExit:
        return []
    return ["--json"]


@needs_fashion_mnist
def test_the_ema_eval_example_works_on_the_run_of_the_train_example(tmp_path, capsys):
    from mirrorla.cli import main

    (evaluate,) = [c for c in _commands("docs/training.md", "mirrorla eval") if "--ema" in c]
    checkpoint = Path(evaluate[1])
    run = checkpoint.parent.parent
    (trained,) = [c for c in _commands("docs/training.md", "mirrorla train") if str(run) in c]
    out = tmp_path / run
    train_args = [str(out) if a == str(run) else a for a in trained]
    # The doc's command as written, shrunk (later options win) so it runs in seconds; the epochs stay, so the
    # checkpoint the eval example names is the one this run writes.
    small = ["--train-subset", "64", "--eval-subset", "32", "--batch-size", "32", "--embed-dim", "16", "--depth", "1",
             "--threads", "1", "--no-progress", "--no-download"]  # fmt: skip
    assert main(train_args + small) == 0
    capsys.readouterr()
    eval_args = [str(tmp_path / checkpoint) if a == str(checkpoint) else a for a in evaluate]
    assert main([*eval_args, "--eval-subset", "32", "--device", "cpu", *_json_flag(eval_args)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{") :])
    assert result["weights"] == "ema" and 0 <= result["top1"] <= 100


def test_linearize_topk_help_agrees_with_the_docs_and_the_code(capsys):
    """``--topk`` counts tokens kept per earlier chunk and head (``select_topk`` over each chunk's positions)."""
    from mirrorla.cli import main
    from mirrorla.still.config import StillConfig

    try:
        assert main(["linearize", "--help"]) == 0
    except SystemExit as stop:
        assert stop.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--topk TOPK tokens per earlier chunk and head kept for exact softmax attention" in help_text, help_text
    row = "| `topk` | 4 | tokens per old chunk and head kept for exact attention"
    assert row in (ROOT / "docs/still.md").read_text()
    config_doc = " ".join(StillConfig.__doc__.split())
    assert "topk: tokens per chunk and head kept for exact softmax attention" in config_doc


def test_demo_runs_as_documented(capsys):
    """docs/api.md: ``mirrorla demo``'s defaults and its table."""
    from mirrorla.cli import build_parser, main

    text = " ".join((ROOT / "docs" / "api.md").read_text().split())
    assert "`mirrorla demo` builds every registered attention" in text
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.dim, defaults.heads, defaults.grid, defaults.batch) == (384, 6, 56, 2)
    assert "at C = 384, 6 heads, a 56×56 token grid (N = 3,136), batch 2" in text
    assert main(["demo", "--dim", "16", "--heads", "2", "--grid", "4", "--attentions", "mirror,softmax"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| attention | params | output shape | fwd+bwd ms | output finite |" in lines
    for name in ("mirror", "softmax"):
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        assert "(2, 16, 16)" in row and row.endswith("| True |")
