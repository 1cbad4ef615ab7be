"""docs/results/mirrorla-study/tables.py: the study's tables come from the stored result files, nothing filled in."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "mirrorla-study"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("study_tables", STUDY / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(text: str, label: str, after: str) -> str:
    part = text.split(after, 1)[1]
    return next(line for line in part.splitlines() if line.startswith(f"| {label} |"))


def test_paired_differences_are_the_seed_by_seed_differences(tables, capsys):
    tables.main(STUDY)
    text = capsys.readouterr().out
    runs = json.loads((STUDY / "p4" / "results.json").read_text())["methods"]
    diffs = [runs["mirror_block"]["runs"][s]["final_top1"] - runs["linear_relu"]["runs"][s]["final_top1"]
             for s in ("0", "1", "2")]  # fmt: skip
    row = _row(text, "R1 + block reflection", "Paired differences")
    each = " / ".join(f"{d:+.2f}" for d in diffs)
    assert f"{statistics.mean(diffs):+.2f} ({each})" in row
    assert row.split("|")[3].strip() == f"{sum(d > 0 for d in diffs)}/3"
    assert _row(text, "R0 ReLU", "Paired differences").split("|")[2].strip() == "–"  # not against itself


def test_a_missing_comparison_is_reported_not_filled_in(tables, tmp_path, capsys):
    shutil.copytree(STUDY / "p4", tmp_path / "p4")
    tables.main(tmp_path)
    text = capsys.readouterr().out
    assert f"(missing: {tmp_path / 'p2'}/results.json)" in text
    assert f"(missing: {tmp_path}/analyze-p4/comparison.json)" in text
    assert "| R0 ReLU | `linear_relu` |" in text


def test_six_seed_rows_join_the_two_comparisons(tables, capsys):
    tables.six_seeds(STUDY)
    text = capsys.readouterr().out
    top1 = {}
    for folder in ("p4", "p4-seeds345"):
        methods = json.loads((STUDY / folder / "results.json").read_text())["methods"]
        for name in ("linear_relu", "mirror"):
            for seed, run in methods[name]["runs"].items():
                top1[name, seed] = run["final_top1"]
    diffs = [top1["mirror", str(s)] - top1["linear_relu", str(s)] for s in range(6)]
    row = next(line for line in text.splitlines() if line.startswith("| R3 = MirrorLA (α = 0.1π) − R0 ReLU |"))
    assert f"{statistics.mean(diffs):+.2f} (" in row and row.rstrip(" |").endswith(f"{sum(d > 0 for d in diffs)}/6")


def test_the_script_prints_the_tables(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(STUDY / "tables.py"), str(STUDY)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "## Ablation and peers, 49 tokens (patch 4)" in out and "### Six seeds (49 tokens)" in out
