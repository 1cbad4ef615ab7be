"""scripts/results_tables.py: every marked table in README.md and docs/ is what its generator prints from the
committed results files (or from the code), so a table cannot drift from the numbers it reports."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_doc_table_is_what_its_generator_prints(tables):
    differ = tables.stale(ROOT)
    assert differ == [], f"tables differ from their results files: {differ}; run scripts/results_tables.py --write"


@pytest.mark.slow
def test_the_expensive_tables_too(tables):
    assert tables.SLOW, "no slow table registered: drop this test"
    assert tables.stale(ROOT, slow=True) == []


def test_every_registered_table_appears_in_a_doc(tables):
    used = tables.used(ROOT)
    assert set(tables.TABLES) == set(used), "a generator without a marker, or a marker without a generator"


def test_a_changed_number_is_caught_and_rewritten(tables):
    text = (ROOT / "docs" / "results" / "fashion-mnist.md").read_text()
    assert "| nala | 82.52 ± 0.83 | 82.67 ± 0.89 | -0.15 | none |" in text
    tampered = text.replace("| nala | 82.52 ± 0.83 | 82.67 ± 0.89 |", "| nala | 82.52 ± 0.83 | 82.52 ± 0.83 |")
    assert tampered != text
    assert tables.regenerate(tampered, ROOT) == text


def test_the_before_column_comes_from_the_earlier_run(tables):
    before = json.loads((ROOT / "docs/results/fashion-mnist/before-weight-decay-fix/results.json").read_text())
    out = tables.render("fashion-mnist/weight-decay-fix", ROOT)
    for name, method in before["methods"].items():
        top1 = [r["final_top1"] for r in method["runs"].values()]
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[2] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}", name
    # the rows whose angles were weight-decayed before the fix do not reproduce
    assert "| mirror_cross | 79.58 ± 0.06 | 79.58 ± 0.06 | +0.00 | 0, 1, 2 |" in out
    assert "| mirror | 79.40 ± 0.84 | 79.63 ± 0.71 | -0.23 | none |" in out


def test_a_missing_results_file_is_reported_not_filled_in(tables, tmp_path):
    out = tables.render("fashion-mnist/per-seed", tmp_path)
    assert out.startswith("(missing: docs/results/fashion-mnist/results.json")


def test_an_unknown_table_name_lists_the_registered_ones(tables):
    with pytest.raises(KeyError, match="fashion-mnist/results"):
        tables.render("fashion-mnist/nope", ROOT)


def test_check_exits_nonzero_on_a_stale_table(tables, tmp_path, capsys):
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    (tmp_path / "README.md").write_text("<!-- table: fashion-mnist/per-seed -->\n| old |\n<!-- /table -->\n")
    assert tables.main(["--check", "--root", str(tmp_path)]) == 1
    assert "README.md: fashion-mnist/per-seed" in capsys.readouterr().out
    assert tables.main(["--write", "--root", str(tmp_path)]) == 0
    assert tables.main(["--check", "--root", str(tmp_path)]) == 0
    assert "(missing: docs/results/fashion-mnist/results.json" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("name", ["deit_tiny_mirror", "pvt_tiny_mirror"])
def test_a_small_model_row_of_the_macs_tables_is_what_the_code_counts(tables, name):
    """The full MAC tables are slow (Base models at 224²); one small row of each family is checked by default."""
    import torch

    from mirrorla.models.flops import cost_table, model_cost

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # counts do not depend on threads; one is several times faster on a busy machine
    try:
        row = cost_table([model_cost(name)]).splitlines()[-1]
    finally:
        torch.set_num_threads(threads)
    for doc in ("README.md", "docs/models.md"):
        assert row in (ROOT / doc).read_text(), (doc, row)
    assert name in tables.flops_names(tables.FLOPS_README)


def test_the_still_real_model_section_is_what_its_report_script_writes():
    """docs/results/still.md's real-model section is scripts/still/real_model_report.py's output for the committed
    docs/results/still_real_model.json (its own markers, since the section is prose and tables together)."""
    spec = importlib.util.spec_from_file_location("real_model_report", ROOT / "scripts/still/real_model_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    doc = (ROOT / "docs/results/still.md").read_text()
    assert report.BEGIN in doc and report.END in doc, "the real-model section's markers are missing"
    committed = report.BEGIN + doc.split(report.BEGIN, 1)[1].split(report.END, 1)[0] + report.END
    results = json.loads((ROOT / "docs/results/still_real_model.json").read_text())
    assert committed == report.section(results).rstrip("\n"), "regenerate with scripts/still/real_model_report.py"
