"""Run folders: what `train --resume` takes from the command line, one writer per folder, the data used.

Everything runs through the CLI on a tiny ViT (16 wide, 1 block, patch 7) and a header-correct
stand-in for Fashion-MNIST (all-zero images, labels 0…9), so no test depends on the real data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from mirrorla.cli import build_parser, main
from mirrorla.data import DatasetNotFoundError, build_datasets, write_idx
from mirrorla.data import fashion_mnist as fm

FILE_NAMES = [f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--patch-size", "7", "--batch-size", "16",
        "--epochs", "1", "--train-subset", "64", "--eval-subset", "32", "--no-download"]  # fmt: skip


def _fake_fashion_mnist(directory, fill=0):
    """The four Fashion-MNIST files at their real sizes (constant images compress to a few KB)."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), fill, np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return directory


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return _fake_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(autouse=True)
def system_copy_elsewhere(fake_data, tmp_path, monkeypatch):
    """A Fashion-MNIST copy on the search path (as /usr/share/datasets/fashion-mnist would be), no real one."""
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", fake_data)


def _train(out, data_dir, *extra):
    return main(["train", "--data-dir", str(data_dir), *TINY, "--no-progress", "--threads", "1", "--out", str(out),
                 *extra])  # fmt: skip


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 3. train --resume: what the command line gave ------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "again", "field"),
    [
        (["--attention", "mirror"], ["--attention", "softmax"], "attention"),
        (["--lr", "0.002"], ["--lr", "0.001"], "lr"),
    ],
)
def test_resume_refuses_an_option_given_at_its_default(tmp_path, fake_data, capsys, first, again, field):
    run = tmp_path / "run"
    assert _train(run, fake_data, *first) == 0
    args = build_parser().parse_args(["train", "--resume", str(run), *again])
    from mirrorla.commands.train import config_from_args

    assert str(getattr(config_from_args(args), field)) == again[1]  # given, so it is not silently dropped
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *again]) == 2
    err = capsys.readouterr().err
    assert f"{field}: checkpoint" in err and re.match(r"mirrorla \w+: error: ", err)


def test_resume_may_change_options_that_do_not_change_results(tmp_path, fake_data):
    run = tmp_path / "run"
    assert _train(run, fake_data, "--attention", "mirror") == 0
    changed = ["--threads", "1", "--device", "cpu", "--keep-checkpoints", "3", "--workers", "0", "--no-progress"]
    assert main(["train", "--resume", str(run), *changed]) == 0
    assert json.loads((run / "config.json").read_text())["keep_checkpoints"] == 3


def test_new_run_takes_defaults_from_train_config(tmp_path):
    from mirrorla.commands.train import config_from_args
    from mirrorla.engine import TrainConfig

    assert config_from_args(build_parser().parse_args(["train"])) == TrainConfig(out_dir="runs/train")
    cfg = config_from_args(build_parser().parse_args(["train", "--attn-opt", "alpha_init=0.1", "--lr", "0.01"]))
    assert cfg.attention_kwargs == {"alpha_init": 0.1} and cfg.lr == 0.01


def test_resume_of_a_copied_run_writes_into_the_copy(tmp_path, fake_data):
    original, copy = tmp_path / "original", tmp_path / "copy"
    assert _train(original, fake_data) == 0
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0
    assert not original.exists()  # the out_dir recorded in the checkpoint is not written to
    assert json.loads((copy / "config.json").read_text())["out_dir"] == str(copy)


def test_resume_into_another_folder_is_refused(tmp_path, fake_data, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert _train(run, fake_data) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "cp -r" in err and not other.exists()
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2  # one or the other
    assert "--overwrite" in capsys.readouterr().err


# --- 7. one writer per run folder -------------------------------------------------------------------------------


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert _train(run, fake_data, "--epochs", "2") == 0
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _train(run, fake_data) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == before
    assert _train(run, fake_data, "--overwrite") == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == ["epoch0000.safetensors"]
    assert not (run / "run.lock").exists()


def _lock_holder(folder):
    """A second process that takes the run folder's lock, keeps it until it reads a line (then releases
    it) or is killed (then leaves it behind).

    It writes the lock as :class:`~mirrorla.engine.run_folder.FolderLock` does (O_EXCL; pid, host, start
    time as JSON) with the standard library only: importing torch would make the test 10 s slower.
    """
    code = (
        "import json, os, socket, sys, time; os.makedirs(sys.argv[1], exist_ok=True); "
        "fd = os.open(os.path.join(sys.argv[1], 'run.lock'), os.O_CREAT | os.O_EXCL | os.O_WRONLY); "
        "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(), "
        "'purpose': 'training'}).encode()); os.close(fd); print('locked', flush=True); sys.stdin.readline(); "
        "os.remove(os.path.join(sys.argv[1], 'run.lock'))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_two_writers_are_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    holder = _lock_holder(run)
    try:
        capsys.readouterr()
        assert _train(run, fake_data) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and str(run / "run.lock") in err
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run / "run.lock").exists()  # a killed process leaves its lock behind ...
    assert _train(run, fake_data) == 0  # ... which is stale: taken over with a warning
    assert f"pid {holder.pid}" in capsys.readouterr().err
    assert not (run / "run.lock").exists() and (run / "final.json").is_file()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    from mirrorla.engine.run_folder import FolderLock

    lock_file = tmp_path / "run.lock"
    # This process is alive but started long after 1970: the pid was reused, the lock is stale.
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": 1000.0}))
    with FolderLock(tmp_path):
        assert json.loads(lock_file.read_text())["started"] > 1000.0
    assert not lock_file.exists()


def test_lock_is_released_when_training_fails(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert _train(run, fake_data, "--lr", "1e30") == 2
    assert "loss is" in capsys.readouterr().err and not (run / "run.lock").exists()


def test_compare_refuses_a_used_folder_without_resume_or_overwrite(tmp_path, fake_data, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "results.json").write_text("{}")
    args = ["compare", "--attentions", "softmax", "--seeds", "0", *TINY, "--data-dir", str(fake_data), "--jobs", "1",
            "--throughput-iters", "1", "--throughput-rounds", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and (out / "results.json").read_text() == "{}"
    assert main([*args, "--overwrite"]) == 0
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["softmax"]


# `python -m mirrorla.cli` registers no commands (they register with the imported module, not __main__).
CLI = [sys.executable, "-c", "import sys; from mirrorla.cli import main; sys.exit(main())"]


def _compare_cmd(out, data_dir, attentions):
    return [*CLI, "compare", "--attentions", attentions, "--seeds", "0", *TINY, "--data-dir", str(data_dir),
            "--jobs", "1", "--threads", "1", "--throughput-iters", "1", "--throughput-rounds", "1", "--resume",
            "--out", str(out)]  # fmt: skip


def test_two_compare_shards_share_one_table(tmp_path, fake_data):
    """One shard in a second process, the other in this one, at the same time, into one --out."""
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen(_compare_cmd(out, fake_data, "softmax"), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert main(_compare_cmd(out, fake_data, "mirror")[len(CLI) :]) == 0
    log = other.communicate(timeout=300)[0]
    assert other.returncode == 0, log
    saved = json.loads((out / "results.json").read_text())
    assert sorted(saved["methods"]) == ["mirror", "softmax"]
    table = (out / "results.md").read_text()
    assert "| softmax |" in table and "| mirror |" in table
    assert not list(out.rglob("*.lock"))


def _strip_new_records(out):
    """Make ``out`` look like a comparison written by the code before data hashes and locks."""
    for path in out.rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data.pop("record_sha256", None)  # result files carry no checksum before it either
            data.pop("data_files", None)
            for key in ("dataset_info", "dataset"):
                if isinstance(data.get(key), dict):
                    data[key].pop("files", None)
            for m in data.get("methods", {}).values():
                for r in m["runs"].values():
                    r.pop("data_files", None)
            path.write_text(json.dumps(data))
    for path in out.rglob("*.lock"):
        path.unlink()


def test_compare_resume_reuses_runs_written_before_data_hashes(tmp_path, fake_data, monkeypatch):
    from mirrorla.engine import compare
    from mirrorla.engine.compare import BASE, CompareConfig, run_compare

    base = BASE.replace(embed_dim=16, depth=1, num_heads=2, patch_size=7, batch_size=16, epochs=1, train_subset=64,
                        eval_subset=32, data_dir=str(fake_data), download=False)  # fmt: skip
    cc = CompareConfig(attentions=("softmax", "mirror"), seeds=(0,), base=base, out_dir=str(tmp_path / "cmp"),
                       throughput_iters=1, throughput_rounds=1)  # fmt: skip
    first = run_compare(cc)
    assert first["methods"]["mirror"]["runs"]["0"]["data_files"]  # recorded now ...
    _strip_new_records(tmp_path / "cmp")  # ... but not by the runs being trained with the older code

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "train", no_training)
    again = run_compare(CompareConfig(**{**cc.__dict__, "resume": True}))
    for name in ("softmax", "mirror"):
        assert again["methods"][name]["runs"]["0"]["wall_s"] == first["methods"][name]["runs"]["0"]["wall_s"]


# --- 8. the data actually used ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "empty", "partial"])
def test_explicit_data_dir_is_used_or_the_run_fails(tmp_path, kind):
    given = tmp_path / "given"
    if kind != "missing":
        given.mkdir()
    if kind == "partial":
        _fake_fashion_mnist(given)
        (given / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        build_datasets("fashion_mnist", data_dir=given, train_subset=8, eval_subset=8, download=True)
    msg = str(info.value)
    assert str(given) in msg and "FashionMNIST/raw" in msg and all(name in msg for name in FILE_NAMES)
    if kind == "partial":
        assert "missing: t10k-labels-idx1-ubyte" in msg


def test_train_with_a_missing_data_dir_fails_on_the_command_line(tmp_path, capsys):
    assert _train(tmp_path / "run", tmp_path / "nonexistent") == 2
    err = capsys.readouterr().err
    assert re.match(r"mirrorla \w+: error: ", err) and "\n" not in err.strip() and str(tmp_path / "nonexistent") in err
    assert "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_runs_record_the_data_files_they_read(tmp_path, fake_data, monkeypatch):
    monkeypatch.chdir(fake_data.parent)
    assert _train(tmp_path / "run", fake_data.name) == 0  # a relative --data-dir
    files = json.loads((tmp_path / "run" / "config.json").read_text())["dataset_info"]["files"]
    assert files == [
        {"path": str(fake_data.resolve() / name), "sha256": _sha256(fake_data / name),
         "bytes": (fake_data / name).stat().st_size}
        for name in sorted(FILE_NAMES)
    ]  # fmt: skip
    # Without --data-dir the search order finds the copy on the search path, and that is what is recorded.
    assert main(["train", *TINY, "--no-progress", "--out", str(tmp_path / "found")]) == 0
    found = json.loads((tmp_path / "found" / "config.json").read_text())["dataset_info"]["files"]
    assert [f["sha256"] for f in found] == [f["sha256"] for f in files]


def test_resume_with_different_data_is_refused(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert _train(run, fake_data) == 0
    other = _fake_fashion_mnist(tmp_path / "other", fill=7)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and str(other / "train-images-idx3-ubyte.gz") in err
    moved = tmp_path / "moved"
    shutil.copytree(fake_data, moved)  # the same files elsewhere are the same data
    assert main(["train", "--resume", str(run), "--data-dir", str(moved)]) == 0


def test_compare_records_each_runs_data_files(tmp_path, fake_data):
    out = tmp_path / "cmp"
    args = ["compare", "--attentions", "softmax", "--seeds", "0", *TINY, "--data-dir", str(fake_data), "--jobs", "1",
            "--throughput-iters", "1", "--throughput-rounds", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    run = json.loads((out / "results.json").read_text())["methods"]["softmax"]["runs"]["0"]
    assert sorted(f["sha256"] for f in run["data_files"]) == sorted(_sha256(fake_data / n) for n in FILE_NAMES)


def test_lock_waits_for_its_holder_then_names_it(tmp_path):
    """compare's results lock: a second writer waits while the first writes, up to a limit."""
    import threading

    from mirrorla.engine.run_folder import FolderLock, FolderLockedError

    holder = _lock_holder(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
            FolderLock(tmp_path).acquire(timeout=0.3)
        assert time.perf_counter() - t0 >= 0.3
        threading.Timer(0.5, lambda: (holder.stdin.write("done\n"), holder.stdin.flush())).start()
        t0 = time.perf_counter()
        with FolderLock(tmp_path).acquire(timeout=60):
            assert time.perf_counter() - t0 >= 0.4 and holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "run.lock").exists()


# --- what was used is what is recorded; Ctrl-C ------------------------------------------------------------------


def test_a_subset_larger_than_the_data_is_refused(tmp_path, fake_data, capsys):
    assert _train(tmp_path / "run", fake_data, "--train-subset", "100000000") == 2
    err = capsys.readouterr().err
    assert "train_subset 100000000" in err and "(60000 images)" in err and not (tmp_path / "run").exists()


def test_compare_honours_a_given_epochs_and_subset(tmp_path, fake_data):
    out = tmp_path / "cmp"
    args = ["compare", "--quick", "--attentions", "softmax", *TINY, "--epochs", "2", "--data-dir", str(fake_data),
            "--jobs", "1", "--throughput-iters", "1", "--throughput-rounds", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["epochs"] == 2 and saved["config"]["train_subset"] == 64  # not the preset's 3 / 5000
    assert saved["dataset"]["train_size"] == 64 and len(saved["methods"]["softmax"]["runs"]["0"]["curve_top1"]) == 2


def _interrupt_at_epoch(monkeypatch, epoch):
    """Ctrl-C when the trainer reports ``epoch`` (0-based), before that epoch's checkpoint is written."""
    from mirrorla.engine import trainer

    real = trainer._print_epoch

    def print_epoch(record, *args, **kwargs):
        if record["epoch"] == epoch:
            raise KeyboardInterrupt
        real(record, *args, **kwargs)

    monkeypatch.setattr(trainer, "_print_epoch", print_epoch)


def test_ctrl_c_in_train_says_what_was_saved_and_how_to_resume(tmp_path, fake_data, capsys, monkeypatch):
    run = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 1)
    assert _train(run, fake_data, "--epochs", "3") == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert "epoch 1/3" in err and f"mirrorla train --resume {run}" in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # the command it gave works
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3 and not (run / "run.lock").exists()


def test_ctrl_c_before_any_checkpoint(tmp_path, fake_data, capsys, monkeypatch):
    _interrupt_at_epoch(monkeypatch, 0)
    assert _train(tmp_path / "run", fake_data) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no checkpoint was saved" in err and "mirrorla train" in err


def test_ctrl_c_in_compare_says_how_to_continue(tmp_path, fake_data, capsys, monkeypatch):
    out = tmp_path / "cmp"
    args = ["compare", "--attentions", "softmax,mirror", "--seeds", "0", *TINY, "--data-dir", str(fake_data),
            "--jobs", "1", "--throughput-iters", "1", "--throughput-rounds", "1", "--out", str(out)]  # fmt: skip
    from mirrorla.engine import compare

    real = compare.train

    def train(cfg, *a, **kw):
        if cfg.attention == "mirror":
            raise KeyboardInterrupt
        return real(cfg, *a, **kw)

    monkeypatch.setattr(compare, "train", train)
    assert main(args) == 130
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert "1 of 2 runs are finished" in err and "--resume" in err and "Traceback" not in captured.err
    assert "[softmax seed 0] epoch 1/1" in captured.out and "[softmax seed 0] finished" in captured.out
    monkeypatch.undo()
    resumed = err.split("Continue with: mirrorla ", 1)[1].split()
    capsys.readouterr()
    assert main(resumed) == 0
    out_lines = capsys.readouterr().out.splitlines()
    assert any("reusing 1 of 2 runs" in ln for ln in out_lines)
    assert sum("finished: top-1" in ln for ln in out_lines) == 1  # the one run trained now, reported once


def _compare_args(out, data_dir, *extra):
    return ["compare", "--attentions", "softmax,mirror", "--seeds", "0", *TINY, "--data-dir", str(data_dir),
            "--threads", "1", "--throughput-iters", "1", "--throughput-rounds", "1", "--no-progress", "--out",
            str(out), *extra]  # fmt: skip


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_compare_resume_continues_an_unfinished_run_from_its_checkpoint(tmp_path, fake_data, capfd, monkeypatch,
                                                                        jobs):  # fmt: skip
    from mirrorla.engine import compare

    real = compare.train

    def train(cfg, *a, **kw):  # Ctrl-C in mirror's third epoch, after the checkpoints of its first two
        if cfg.attention == "mirror":
            _interrupt_at_epoch(monkeypatch, 2)
        return real(cfg, *a, **kw)

    monkeypatch.setattr(compare, "train", train)
    out = tmp_path / "cmp"
    assert main(_compare_args(out, fake_data, "--epochs", "3", "--jobs", "1")) == 130
    run = out / "runs" / "mirror" / "seed0"
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 1
    monkeypatch.undo()
    capfd.readouterr()
    assert main(_compare_args(out, fake_data, "--epochs", "3", "--jobs", jobs, "--resume")) == 0
    said = capfd.readouterr().out  # fd level: the lines of the worker processes too
    assert "[mirror seed 0] continuing the unfinished run from its epoch-2 checkpoint" in said
    assert "[mirror seed 0] epoch 3/3" in said and "[mirror seed 0] epoch 1/3" not in said
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    # The continued run computes what the uninterrupted one does.
    whole = tmp_path / "whole"
    assert main(_compare_args(whole, fake_data, "--epochs", "3", "--jobs", "1", "--attentions", "mirror")) == 0
    cont = json.loads((run / "result.json").read_text())
    ref = json.loads((whole / "runs" / "mirror" / "seed0" / "result.json").read_text())
    assert cont["curve_train_loss"] == pytest.approx(ref["curve_train_loss"], rel=1e-6)
    assert cont["curve_top1"] == ref["curve_top1"]


def _interrupted_mirror_run(out, data_dir, monkeypatch, capsys):
    """A one-attention comparison stopped by Ctrl-C in its second epoch, after the first epoch's checkpoint."""
    _interrupt_at_epoch(monkeypatch, 1)
    assert main(_compare_args(out, data_dir, "--epochs", "2", "--jobs", "1", "--attentions", "mirror")) == 130
    monkeypatch.undo()
    capsys.readouterr()


def test_compare_resume_restarts_an_unfinished_run_with_other_settings(tmp_path, fake_data, capsys, monkeypatch):
    out = tmp_path / "cmp"
    _interrupted_mirror_run(out, fake_data, monkeypatch, capsys)
    args = _compare_args(out, fake_data, "--epochs", "2", "--jobs", "1", "--attentions", "mirror", "--lr", "0.002")
    assert main([*args, "--resume"]) == 0
    said = capsys.readouterr().out
    assert "[mirror seed 0] its unfinished run cannot be continued (--resume needs the same settings" in said
    assert "training it from the start" in said and "[mirror seed 0] epoch 1/2" in said
    run = out / "runs" / "mirror" / "seed0"
    assert json.loads((run / "config.json").read_text())["lr"] == 0.002
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_compare_resume_restarts_an_unfinished_run_on_other_data(tmp_path, fake_data, capsys, monkeypatch):
    out = tmp_path / "cmp"
    _interrupted_mirror_run(out, fake_data, monkeypatch, capsys)
    other = _fake_fashion_mnist(tmp_path / "other", fill=7)
    assert main([*_compare_args(out, other, "--epochs", "2", "--jobs", "1", "--attentions", "mirror"), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "[mirror seed 0] its unfinished run cannot be continued (--resume needs the data the run was" in said
    assert "[mirror seed 0] epoch 1/2" in said
    run = out / "runs" / "mirror" / "seed0"
    recorded = json.loads((run / "config.json").read_text())["dataset_info"]["files"]
    assert {f["sha256"] for f in recorded} == {_sha256(p) for p in other.iterdir()}
