"""``mirrorla compare``: table, JSON and figures from a tiny comparison; CLI end-to-end on real data."""

from __future__ import annotations

import json

import pytest
import torch

from mirrorla.cli import main
from mirrorla.data import DatasetNotFoundError, InMemoryImages, find_fashion_mnist
from mirrorla.data.datasets import DatasetInfo
from mirrorla.engine.compare import BASE, CompareConfig, format_table, run_compare
from mirrorla.engine.model import measure_throughput_rounds
from mirrorla.engine.trainer import TrainingDivergedError

TINY = dict(embed_dim=16, depth=1, num_heads=2, patch_size=7, epochs=1, batch_size=16)


def _synthetic(n_train=96, n_eval=40):
    g = torch.Generator().manual_seed(0)
    templates = torch.randint(0, 256, (10, 1, 28, 28), generator=g).float()

    def make(n):
        labels = torch.arange(n) % 10
        return (templates[labels] + torch.randn(n, 1, 28, 28, generator=g) * 60).clamp(0, 255).byte(), labels

    common = dict(mean=(0.5,), std=(0.3,), image_size=28)
    return (
        InMemoryImages(*make(n_train), augment=True, **common),
        InMemoryImages(*make(n_eval), augment=False, **common),
        DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.3,), n_train, n_eval),
    )


def test_compare_writes_table_json_and_figures(tmp_path, capsys):
    cc = CompareConfig(
        attentions=("softmax", "mirror"),
        seeds=(0, 1),
        base=BASE.replace(**TINY),
        out_dir=str(tmp_path),
        throughput_batch=8,
        throughput_warmup=1,
        throughput_iters=1,
        throughput_rounds=2,
    )
    results = run_compare(cc, _synthetic())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["attentions"] == ["softmax", "mirror"] and saved["seeds"] == [0, 1]
    for name in ("softmax", "mirror"):
        m = saved["methods"][name]
        finals = [m["runs"][s]["final_top1"] for s in ("0", "1")]
        assert m["top1_mean"] == pytest.approx(sum(finals) / 2)
        assert m["top1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
        assert m["params"] > 0 and m["macs"] > 0 and m["eval_img_s"] > 0 and m["train_img_s"] > 0
        assert len(m["eval_img_s_rounds"]) == 2 and m["eval_img_s"] == pytest.approx(
            sum(m["eval_img_s_rounds"]) / 2
        )  # median of two rounds
        assert len(m["runs"]["0"]["curve_top1"]) == 1
    assert saved["methods"]["mirror"]["params"] > saved["methods"]["softmax"]["params"]  # θ, α, û per layer
    table = (tmp_path / "results.md").read_text()
    assert format_table(results) in table and "| softmax |" in table and "| mirror |" in table
    assert "±" in table and "MACs" in table and "FlopCounterMode" in table
    assert f"training threads per run: {torch.get_num_threads()}." in table
    assert saved["methods"]["mirror"]["runs"]["0"]["threads"] == torch.get_num_threads()
    for png in ("accuracy_curves.png", "accuracy_vs_throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mirror |" in capsys.readouterr().out
    # --resume reuses the finished runs (no training: the stored numbers come back unchanged).
    again = run_compare(CompareConfig(**{**cc.__dict__, "resume": True}), _synthetic())
    assert again["methods"]["mirror"]["runs"]["1"]["wall_s"] == results["methods"]["mirror"]["runs"]["1"]["wall_s"]


def test_parallel_jobs_give_the_same_results_as_one_process(tmp_path):
    common = dict(attentions=("softmax", "mirror"), seeds=(0, 1), throughput_batch=8, throughput_warmup=1,
                  throughput_iters=1, throughput_rounds=1)  # fmt: skip
    base = BASE.replace(**TINY, threads=1)
    serial = run_compare(CompareConfig(base=base, out_dir=str(tmp_path / "serial"), **common), _synthetic())
    parallel = run_compare(CompareConfig(base=base, out_dir=str(tmp_path / "par"), jobs=2, **common), _synthetic())
    for name in ("softmax", "mirror"):
        for seed in ("0", "1"):
            a, b = serial["methods"][name]["runs"][seed], parallel["methods"][name]["runs"][seed]
            assert a["curve_top1"] == b["curve_top1"] and a["curve_train_loss"] == pytest.approx(b["curve_train_loss"])
            assert (tmp_path / "par" / "runs" / name / f"seed{seed}" / "result.json").is_file()
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        CompareConfig(jobs=0)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_diverging_run_stops_the_job_with_the_trainers_error(tmp_path, jobs):
    cc = CompareConfig(attentions=("softmax",), seeds=(0,), base=BASE.replace(**TINY, lr=1e30, threads=1),
                       out_dir=str(tmp_path), jobs=jobs)  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="loss is .*lower --lr"):
        run_compare(cc, _synthetic())


def test_throughput_rounds_let_the_models_take_turns():
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.w = name, torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            calls.append(self.name)
            return x * self.w

    rounds = measure_throughput_rounds({"a": Probe("a"), "b": Probe("b")}, 1, 4, 2, warmup=2, iters=3, rounds=3)
    assert [len(v) for v in rounds.values()] == [3, 3] and all(v > 0 for vs in rounds.values() for v in vs)
    # round 1: 2 warm-up + 3 timed per model; later rounds: 1 + 3; a and b alternate by round
    assert calls == ["a"] * 5 + ["b"] * 5 + (["a"] * 4 + ["b"] * 4) * 2
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        measure_throughput_rounds({"a": Probe("a")}, 1, 4, rounds=0)


def test_partial_table_marks_unmeasured_throughput():
    results = {"seeds": [0], "methods": {"mirror": dict(top1_mean=80.0, top1_std=None, params=1000, macs=2e6,
               train_img_s=10.0, eval_img_s=None)}}  # fmt: skip
    assert "| mirror | 80.00 | 1.00K | 2.00M | 10 | – |" in format_table(results)


def test_compare_rejects_unknown_attention(tmp_path):
    cc = CompareConfig(attentions=("softmax", "does_not_exist"), seeds=(0,), out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'does_not_exist'; valid names: .*softmax"):
        run_compare(cc, _synthetic())
    assert main(["compare", "--attentions", "does_not_exist", "--out", str(tmp_path)]) == 2


def _has_fashion_mnist():
    try:
        find_fashion_mnist(download=False)
        return True
    except DatasetNotFoundError:
        return False


@pytest.mark.skipif(not _has_fashion_mnist(), reason="Fashion-MNIST not installed")
def test_cli_compare_quick_on_real_subset(tmp_path, capsys):
    args = ["compare", "--quick", "--attentions", "softmax,linear_relu", "--train-subset", "64", "--eval-subset",
            "32", "--epochs", "1", "--embed-dim", "16", "--depth", "1", "--patch-size", "7", "--batch-size", "16",
            "--throughput-iters", "1", "--no-download", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["preset"] == "quick" and saved["dataset"]["name"] == "fashion_mnist"
    assert saved["dataset"]["train_size"] == 64 and saved["seeds"] == [0]
    assert (tmp_path / "results.md").is_file() and (tmp_path / "accuracy_vs_throughput.png").is_file()
    # a diverging run is reported in one line with exit status 2, not a traceback
    assert main([*args[:-1], str(tmp_path / "diverge"), "--lr", "1e30", "--jobs", "1"]) == 2
    assert "mirrorla compare: error: loss is" in capsys.readouterr().err
