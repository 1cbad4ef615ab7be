"""What a new user sees: start and summary lines, quick presets that say they are smoke runs (in their own
default folders), one default attention, one-line errors for offline downloads and missing extras, readable
figures."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import matplotlib
import numpy as np
import pytest
import torch
from helpers import needs_fashion_mnist

from mirrorla.cli import build_parser, main
from mirrorla.commands.options import preset_out
from mirrorla.data import write_idx
from mirrorla.engine.config import BASE, LRA_BASE, QUICK_NOTES, SR_BASE, TrainConfig

matplotlib.use("Agg")

TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--patch-size", "7", "--batch-size", "16",
        "--epochs", "1", "--train-subset", "64", "--eval-subset", "32", "--no-download"]  # fmt: skip


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fmnist")
    for prefix, n in (("train", 60000), ("t10k", 10000)):  # the official sizes; constant images compress to little
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7, np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return directory


def test_train_prints_a_start_line_and_a_summary_json_only_with_the_option(fake_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_data), *TINY, "--no-progress", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == (
        f"training vit with attention mirror on fashion_mnist (64 train / 32 eval images) from {fake_data}; "
        f"1 epoch, cpu, 1 thread; output {out}"
    )
    final = json.loads((out / "final.json").read_text())  # the JSON is still written
    assert lines[-1].startswith("done in ") and f"eval top-1 {final['eval_top1']:.2f}%" in lines[-1]
    assert f"{final['params']:,} parameters; run folder {out}" in lines[-1]
    assert not any(line.startswith("{") for line in lines)  # no raw JSON without --json
    assert main([*argv[:-1], str(tmp_path / "again"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "again" / "final.json").read_text())
    assert written.pop("record_sha256")  # the file also carries its own checksum (verified on resume)
    assert again == written


def test_one_default_attention_across_tasks():
    assert TrainConfig().attention == BASE.attention == SR_BASE.attention == LRA_BASE.attention == "mirror"
    parser = build_parser()
    for argv in (["train"], ["sr", "train"], ["lra", "train"]):
        assert parser.parse_args(argv + ["--attention", "softmax"]).attention == "softmax"
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "(default: mirror)" in " ".join(help_text.split())


@pytest.mark.parametrize(
    "argv, full",
    [
        (["compare"], "runs/compare"),
        (["sr", "compare"], "runs/sr-compare"),
        (["lra", "compare"], "runs/lra-compare"),
        (["bench", "ops"], "runs/bench"),
        (["bench", "targets"], "runs/bench"),
    ],
)
def test_quick_and_full_presets_write_to_different_default_folders(argv, full):
    parser = build_parser()
    assert preset_out(parser.parse_args(argv)) == full
    assert preset_out(parser.parse_args(argv + ["--quick"])) == full + "-quick"
    assert preset_out(parser.parse_args(argv + ["--quick", "--out", "mine"])) == "mine"


def test_quick_compare_says_it_is_a_smoke_run_beside_its_table(tmp_path, capsys):
    from test_compare import TINY as CMP_TINY
    from test_compare import _synthetic

    from mirrorla.engine.compare import CompareConfig, run_compare

    def run(preset, out):
        cc = CompareConfig(
            attentions=("linear_relu",), seeds=(0,), base=BASE.replace(**CMP_TINY), out_dir=str(out), preset=preset,
            throughput_batch=4, throughput_warmup=1, throughput_iters=1, throughput_rounds=1,
        )  # fmt: skip
        run_compare(cc, _synthetic(32, 16))
        return (out / "results.md").read_text(), capsys.readouterr().out

    md, printed = run("quick", tmp_path / "q")
    note = QUICK_NOTES["compare"]
    assert note in md and md.index("| linear_relu |") < md.index(note)  # below the table
    assert note in printed and printed.index("| linear_relu |") < printed.index(note)
    assert "docs/results/fashion-mnist.md" in note and "smoke run" in note
    md, printed = run("default", tmp_path / "d")
    assert note not in md and note not in printed


def test_every_quick_preset_has_a_note_pointing_at_its_results():
    for job, doc in (
        ("compare", "fashion-mnist.md"),
        ("sr compare", "super-resolution.md"),
        ("lra compare", "long-range.md"),
        ("bench", "efficiency.md"),
    ):
        assert "smoke run" in QUICK_NOTES[job] and f"docs/results/{doc}" in QUICK_NOTES[job]


def test_task_comparisons_write_the_note_under_their_table(tmp_path, capsys):
    from mirrorla.engine.compare import write_results

    write_results(tmp_path, "header", "| a | b |", {"x": 1}, note=QUICK_NOTES["sr compare"])
    md = (tmp_path / "results.md").read_text()
    assert md.index("| a | b |") < md.index(QUICK_NOTES["sr compare"])
    assert QUICK_NOTES["sr compare"] in capsys.readouterr().out


def test_lra_compare_names_its_task_folders(tmp_path, monkeypatch, capsys):
    import mirrorla.engine.lra_compare as lra_compare

    monkeypatch.setattr(lra_compare, "run_lra_suite", lambda cc, tasks, cost_rounds: {"tasks": ["listops", "image"]})
    assert main(["lra", "compare", "--tasks", "listops,image", "--attentions", "mirror", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "<task>" not in printed
    assert f"{tmp_path}/listops/, {tmp_path}/image/" in printed and f"{tmp_path}/summary.md" in printed


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ModuleNotFoundError
    assert main(["compare", "--quick", "--attentions", "mirror", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs matplotlib" in err[0] and 'pip install -e ".[train]"' in err[0], err
    assert not (tmp_path / "c").exists()  # stopped before any work


def test_bench_without_matplotlib_stops_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "ops", "--quick", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[train]"' in err[0] and not (tmp_path / "b").exists()


def test_offline_torchvision_download_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("MIRRORLA_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["train", "--dataset", "cifar10", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "CIFAR10 is not in" in err[0] and "downloading it failed" in err[0] and "--data-dir DIR" in err[0]
    assert not (tmp_path / "cache").exists()  # no empty cache folder left behind


class _Saved:
    """Records the figures saved while it is active (every figure goes through ``save_figure``, the atomic
    writer's figure function; patched where it is imported)."""

    MODULES = ("mirrorla.engine.checkpoint", "mirrorla.engine.sr_figures", "mirrorla.engine.lra_figures",
               "mirrorla.diagnostics.report")  # fmt: skip

    def __init__(self, monkeypatch):
        import importlib

        from mirrorla.engine.checkpoint import save_figure as original

        self.figures = []

        def save_figure(fig, path, *args, **kwargs):
            self.figures.append((str(path), fig))
            return original(fig, path, *args, **kwargs)

        for name in self.MODULES:
            monkeypatch.setattr(importlib.import_module(name), "save_figure", save_figure)

    def get(self, name):
        return next(fig for path, fig in self.figures if path.endswith(name))


@needs_fashion_mnist
def test_analyze_figures_have_colour_bars_and_integer_layer_ticks(tmp_path, monkeypatch):
    saved = _Saved(monkeypatch)
    out = tmp_path / "a"
    argv = ["analyze", "--model", "vit_micro_mirror", "--in-chans", "1"]
    assert main(argv + ["--num-images", "2", "--out", str(out)]) == 0
    maps = saved.get("attention_maps.png")
    images = [ax for ax in maps.axes if ax.images and ax.images[0].get_cmap().name == "viridis"]  # not the input
    bars = [ax for ax in maps.axes if ax.get_label() == "<colorbar>"]
    assert images and len(bars) == len(images)  # one colour bar per attention map
    for ax in saved.get("measures.png").axes:
        ticks = ax.get_xticks()
        assert len(ticks) and all(float(t).is_integer() for t in ticks)  # layer 0, 1, ...: no 0.5


def test_comparison_figure_names_attentions_in_a_legend_not_on_the_points(tmp_path, monkeypatch):
    from mirrorla.diagnostics.report import write_comparison_figure

    saved = _Saved(monkeypatch)
    names = ["softmax", "linear_relu", "mirror", "pola"]
    rows = [{"attention": n, "score": 70.0 + i, "mean": {"entropy_norm": 0.5 + 0.01 * i}} for i, n in enumerate(names)]
    data = {
        "score_label": "top-1 %",
        "attentions": {n: {"entropy_norm": 0.5 + 0.01 * i, "score": 70.0 + i} for i, n in enumerate(names)},
        "correlation_with_score": {"entropy_norm": {"spearman": 1.0, "attentions": 4}},
    }
    write_comparison_figure(rows, data, tmp_path / "comparison.png")
    fig = saved.get("comparison.png")
    assert not any(ax.texts for ax in fig.axes)  # no labels written beside (and over) the points
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == names


def test_ops_plot_uses_distinct_styles_and_the_measured_sizes(tmp_path, monkeypatch):
    from mirrorla.bench.report import plot_ops

    saved = _Saved(monkeypatch)
    results = []
    for i, method in enumerate(["mirror", "linear_relu", "flatten", "pola", "nala", "l2vit_lga", "mirror_block",
                                "mirror_cross", "mirror_block_var", "linear_elu", "mirror_dwc"]):  # fmt: skip
        for n in (1024, 4096, 16384):
            r = {"kind": "layer", "method": method, "N": n, "status": "ok"}
            for mode in ("fwd", "fwdbwd"):
                r[mode] = {"median_ms": (i + 1) * n / 100, "min_ms": 1.0, "max_ms": 1.0}
            r["mem_fwdbwd"] = (i + 1) * n * 1000
            results.append(r)
    plot_ops(results, tmp_path, 1024, "test")
    fig = saved.get("ops_layers.png")
    ax = fig.axes[0]
    styles = {(line.get_color(), line.get_marker()) for line in ax.get_lines()}
    assert len(styles) == len(ax.get_lines()) == 11  # no two lines alike, though tab10 has 10 colours
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1,024", "4,096", "16,384"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legend = ax.get_legend()  # below the panel, off the lines
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0


@torch.no_grad()
def test_sr_compare_announces_whole_image_timing(monkeypatch, capsys):
    from mirrorla.engine import sr_compare

    bar = sr_compare._bar(3, "whole-image timing", True)
    sr_compare._step(bar, "mirror")
    assert bar.n == 1 and "mirror" in bar.postfix
    bar.close()
    assert sr_compare._bar(3, "x", False) is None
