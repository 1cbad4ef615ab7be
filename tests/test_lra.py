"""The long_range task in the one training loop and the ``mirrorla lra`` commands, end to end on tiny data."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import needs_fashion_mnist

from mirrorla.cli import main
from mirrorla.engine.config import LRA_BASE, TASKS, TrainConfig
from mirrorla.engine.lra import accuracy_by_length, length_edges, majority_baseline
from mirrorla.tasks import create_task, list_tasks


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))


def _tiny(task: str, **kw) -> TrainConfig:
    base = dict(
        dataset=task, train_subset=32, eval_subset=16, epochs=1, batch_size=8, threads=1, progress=False,
        save_checkpoints=False,
    )  # fmt: skip
    if task == "listops":
        base["max_len"] = 520
    return LRA_BASE.replace(**{**base, **kw})


def test_task_names_agree():
    assert set(TASKS) == set(list_tasks())


def test_accuracy_by_length_buckets():
    preds = torch.tensor([1, 2, 3, 4, 5, 6])
    labels = torch.tensor([1, 0, 3, 0, 5, 6])
    lengths = torch.tensor([10, 10, 20, 20, 30, 30])
    rows = accuracy_by_length(preds, labels, lengths, edges=[10, 20, 31])
    assert rows == [
        {"lo": 10, "hi": 19, "count": 2, "top1": 50.0},
        {"lo": 20, "hi": 30, "count": 4, "top1": 75.0},
    ]
    edges = length_edges(torch.tensor([500, 2000]), buckets=3)
    assert edges[0] == 500 and edges[-1] == 2001 and len(edges) == 4
    assert majority_baseline([1, 3, 0]) == 75.0
    with pytest.raises(ValueError, match="one shape"):
        accuracy_by_length(preds, labels[:3], lengths)


@pytest.mark.parametrize("task", ["listops", "pathfinder32", pytest.param("image", marks=needs_fashion_mnist)])
def test_tiny_train_every_task(task, tmp_path):
    from mirrorla.engine import train

    cfg = _tiny(task, attention="linear_relu", out_dir=str(tmp_path / "run"), save_checkpoints=True)
    out = train(cfg)
    h = out["history"][-1]
    assert h["eval_images"] == 16 and 0.0 <= h["eval_top1"] <= 100.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["task"] == "long_range" and saved["dataset_info"]["task"] == task


def test_layout_2d_only_for_images():
    task = create_task("long_range")
    with pytest.raises(ValueError, match="needs an image task"):
        task.build_datasets(_tiny("listops", layout="2d"))
    train_set, eval_set, info = task.build_datasets(_tiny("pathfinder32", layout="2d"))
    model = task.build_model(_tiny("pathfinder32", layout="2d", attention="nala"), info)
    assert model.grid == (32, 32)
    assert model(eval_set.get_batch(torch.arange(2))[0]).shape == (2, info.num_classes)


def test_bad_task_settings():
    task = create_task("long_range")
    with pytest.raises(ValueError, match="long-range task is one of"):
        task.build_datasets(_tiny("fashion_mnist"))
    with pytest.raises(ValueError, match="seq_tiny"):
        task.build_model(_tiny("listops", model="vit"), None)
    with pytest.raises(ValueError, match="layout must be"):
        _tiny("image", layout="3d")


@needs_fashion_mnist
def test_cli_train_eval_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["lra", "train", "--dataset", "image", "--train-subset", "32", "--eval-subset", "16", "--epochs", "1",
            "--batch-size", "8", "--attention", "mirror", "--threads", "1", "--no-progress",
            "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "majority class" in out and "done in " in out and "eval top-1 " in out and '"eval_top1"' not in out
    assert main(["lra", "eval", str(run), "--json", str(tmp_path / "e.json")]) == 0
    record = json.loads((tmp_path / "e.json").read_text())
    final = json.loads((run / "final.json").read_text())
    assert abs(record["top1"] - final["eval_top1"]) < 1e-6  # the checkpoint reproduces the run's last evaluation
    # --resume continues a run with its own settings; one that changes the result is refused in one line
    assert main(["lra", "train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert "changes the schedule" in capsys.readouterr().err


def test_cli_errors(capsys):
    assert main(["lra", "train", "--dataset", "cifar10"]) == 2
    assert "long-range task" in capsys.readouterr().err
    assert main(["lra", "train", "--model", "vit"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
    assert main(["lra", "compare", "--tasks", "listops,nope"]) == 2
    assert "--tasks takes" in capsys.readouterr().err


@needs_fashion_mnist
def test_cli_compare_two_tasks(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["lra", "compare", "--quick", "--tasks", "listops,image", "--attentions", "softmax,mirror",
            "--train-subset", "16", "--eval-subset", "16", "--batch-size", "8", "--max-len", "520", "--jobs", "1",
            "--no-progress", "--cost-rounds", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    for task in ("listops", "image"):
        r = json.loads((out / task / "results.json").read_text())
        assert set(r["methods"]) == {"softmax", "mirror"}
        assert all(m["step_s"] > 0 for m in r["methods"].values())
        for name in ("results.md", "accuracy.png", "curves.png", "cost.png"):
            assert (out / task / name).is_file(), name
    assert (out / "listops" / "accuracy_by_length.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "| mirror |" in summary and "majority class" in summary
    assert (out / "accuracy_vs_length.png").is_file()
    # a second job with --resume reuses every run
    assert main([*args, "--resume"]) == 0
    assert "reusing 2 of 2 runs" in capsys.readouterr().out


def test_cli_generate_and_show(tmp_path, capsys):
    png = tmp_path / "pf.png"
    assert main(["lra", "generate", "pathfinder32", "--train-size", "8", "--eval-size", "4", "--show", str(png)]) == 0
    out = capsys.readouterr().out
    assert "pathfinder32: 8 training / 4 evaluation sequences" in out and png.is_file()
    assert main(["lra", "generate", "listops", "--train-size", "2", "--eval-size", "2", "--show", "-"]) == 0
    out = capsys.readouterr().out
    assert "first training example (label " in out and "[M" in out
    assert main(["lra", "generate", "text"]) == 2
    assert "offline" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["text", "retrieval"])
def test_tiny_train_from_user_tsv(task, tmp_path):
    """Text and retrieval train from a user's LRA-layout TSV files (the pair model for retrieval)."""
    from mirrorla.engine import train

    rng = torch.Generator().manual_seed(0)
    words = ["good", "bad", "film", "plot", "actor", "dull", "great", "story"]
    for split, n in (("train", 24), ("test", 16)):
        lines = []
        for i in range(n):
            text = " ".join(words[int(j)] for j in torch.randint(0, 8, (30,), generator=rng))
            if task == "text":
                lines.append(f"{i % 2}\t{text}")
            else:
                lines.append(f"{i % 2}\tdoc{i}a\tdoc{i}b\t{text}\t{text[::-1]}")
        name = f"imdb_{split}.tsv" if task == "text" else f"new_aan_pairs.{split}.tsv"
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    cfg = _tiny(task, data_dir=str(tmp_path), train_subset=None, eval_subset=None, max_len=256)
    out = train(cfg)
    assert out["history"][-1]["eval_images"] == 16
    assert out["model"].pair == (task == "retrieval")


def test_command_task_names_match_the_data_package():
    from mirrorla.commands.lra import TASK_NAMES
    from mirrorla.data.lra import LRA_TASKS

    assert TASK_NAMES == LRA_TASKS
