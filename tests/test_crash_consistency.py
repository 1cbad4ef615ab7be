"""Crash consistency of the commands that write: a resume after a torn or lost metrics line, result files
changed after they were written, a full disk, a read-only output, two writers, and what a killed run
leaves behind.

Full disk and read-only output use a real tmpfs where the tests run as root (``mount -t tmpfs``); elsewhere
those tests skip (the monkeypatched errors of tests/test_run_safety.py still cover the trainer's paths).
The run and lock basics are in tests/test_run_safety.py and tests/test_run_folders.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_fashion_mnist
from PIL import Image
from test_engine import TINY, tiny_data

from mirrorla.cli import main
from mirrorla.engine import TrainConfig, load_checkpoint, save_checkpoint, train
from mirrorla.engine.checkpoint import (
    OutputWriteError,
    ResultFileError,
    atomic_write_bytes,
    read_result_json,
    save_figure,
    write_result_json,
)
from mirrorla.engine.run_folder import FolderLock, claim_run_folder

N_TRAIN, N_EVAL = 96, 32
CFG = TrainConfig(
    attention="mirror", epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.0, train_subset=N_TRAIN,
    eval_subset=N_EVAL, download=False, **TINY,
)  # fmt: skip
SRC = Path(__file__).resolve().parents[1] / "src" / "mirrorla"


@pytest.fixture(scope="module")
def data():
    return tiny_data(N_TRAIN, N_EVAL)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished 2-epoch run (checkpoints of epochs 0 and 1) and its metrics lines; tests work on copies."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(CFG.replace(out_dir=str(run)), data)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after a progress bar's last refresh, if any
    assert re.match(r"mirrorla [\w ]+: error: ", err) and "\n" not in err and "Traceback" not in err, err
    return err


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def _eval_values(record: dict) -> dict:
    """The evaluation metrics of a final.json or metrics record (not its timings)."""
    metrics = {k: v for k, v in record.items() if k.startswith(("eval_", "ema_eval_", "best_"))}
    return {k: v for k, v in metrics.items() if not k.endswith(("_time_s", "_img_s"))}


# --- a resume never publishes an earlier epoch's score -------------------------------------------------------


def _damage(metrics: Path, how: str) -> None:
    lines = metrics.read_text().splitlines()
    if how == "torn":  # a power loss in the middle of the last append
        metrics.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    elif how == "missing":  # the last append never reached the disk
        metrics.write_text("\n".join(lines[:-1]) + "\n")
    elif how == "duplicated":
        metrics.write_text("\n".join([*lines, lines[-1]]) + "\n")
    elif how == "out_of_order":
        metrics.write_text("\n".join(lines[::-1]) + "\n")


@pytest.mark.parametrize("how", ["torn", "missing", "duplicated", "out_of_order"])
def test_resume_after_a_damaged_metrics_file_publishes_the_last_epoch(finished, tmp_path, data, how):
    run = _copy(finished, tmp_path)
    metrics = run / "metrics.jsonl"
    original_lines = metrics.read_text().splitlines()
    original_final = json.loads((run / "final.json").read_text())
    (run / "final.json").unlink()
    _damage(metrics, how)
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: restored the records of epochs 0 to 1"):
        out = train(CFG.replace(out_dir=str(run), resume=str(run)), data)
    final = json.loads((run / "final.json").read_text())
    assert _eval_values(final) == _eval_values(original_final) and _eval_values(final)
    assert metrics.read_text().splitlines() == original_lines  # restored from the checkpoint
    assert [r["epoch"] for r in out["history"]] == [0, 1]


def _strip_history(run: Path) -> None:
    """Make the run's checkpoints look like those written before the state carried the history."""
    for weights in sorted((run / "checkpoints").glob("*.safetensors")):
        ck = load_checkpoint(weights)
        del ck["state"]["history"]
        save_checkpoint(run / "checkpoints", ck["state"]["epoch"], ck["model"], ck["state"], keep=3)


@pytest.mark.parametrize("how", ["torn", "missing"])
def test_resume_of_an_older_checkpoint_recomputes_the_last_epoch(finished, tmp_path, data, how):
    run = _copy(finished, tmp_path)
    _strip_history(run)
    original_final = json.loads((run / "final.json").read_text())
    (run / "final.json").unlink()
    _damage(run / "metrics.jsonl", how)
    with pytest.warns(UserWarning, match="recomputed from the checkpoint"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)
    final = json.loads((run / "final.json").read_text())
    # The same weights evaluated on the same data: the numbers of the uninterrupted run's last epoch.
    assert final["eval_top1"] == original_final["eval_top1"]
    assert final["eval_loss"] == pytest.approx(original_final["eval_loss"], rel=1e-6)
    assert final["best_top1"] == original_final["best_top1"]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["recomputed_from_checkpoint"] is True


def test_older_checkpoint_with_a_conflicting_duplicate_is_an_error(finished, tmp_path, data):
    run = _copy(finished, tmp_path)
    _strip_history(run)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    other = {**json.loads(lines[-1]), "eval_top1": 99.0}
    metrics.write_text("\n".join([*lines, json.dumps(other)]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl is damaged: line 3 repeats epoch 1"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)


@pytest.mark.slow
def test_lra_train_resume_after_a_torn_line_cli(tmp_path, monkeypatch):
    """The repro of the report: a finished `lra train` run, final.json deleted, the last line cut in half."""
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["lra", "train", "--dataset", "listops", "--train-subset", "32", "--eval-subset", "16", "--epochs", "2",
            "--batch-size", "8", "--attention", "mirror", "--threads", "1", "--no-progress",
            "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    original = json.loads((run / "final.json").read_text())
    (run / "final.json").unlink()
    _damage(run / "metrics.jsonl", "torn")
    with pytest.warns(UserWarning, match="restored"):
        assert main(["lra", "train", "--resume", str(run), "--no-progress"]) == 0
    assert _eval_values(json.loads((run / "final.json").read_text())) == _eval_values(original)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, data):
    """A finished one-attention comparison (mirror, seed 0, 2 epochs) written by run_compare."""
    from mirrorla.engine.compare import BASE, CompareConfig, run_compare

    base = BASE.replace(**{**CFG.to_dict(), "attention": None, "out_dir": None})
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    cc = CompareConfig(attentions=("mirror",), seeds=(0,), base=base, out_dir=str(out), jobs=1,
                       throughput_iters=1, throughput_rounds=1, throughput_warmup=1)  # fmt: skip
    run_compare(cc, data)
    return cc, out


def _resume_comparison(comparison, out: Path, data) -> dict:
    from mirrorla.engine.compare import CompareConfig, run_compare

    cc = comparison[0]
    return run_compare(CompareConfig(**{**cc.__dict__, "out_dir": str(out), "resume": True}), data)


RESULT_KEYS = ("final_top1", "best_top1", "final_eval_loss", "curve_top1")


def test_compare_resume_without_result_and_with_a_torn_line(comparison, tmp_path, data):
    out = Path(shutil.copytree(comparison[1], tmp_path / "cmp"))
    reference = json.loads((comparison[1] / "results.json").read_text())["methods"]["mirror"]
    run = out / "runs" / "mirror" / "seed0"
    (run / "result.json").unlink()
    _damage(run / "metrics.jsonl", "torn")
    with pytest.warns(UserWarning, match="restored"):
        again = _resume_comparison(comparison, out, data)["methods"]["mirror"]
    assert again["top1_mean"] == reference["top1_mean"]
    assert {k: again["runs"]["0"][k] for k in RESULT_KEYS} == {k: reference["runs"]["0"][k] for k in RESULT_KEYS}


def test_compare_resume_does_not_trust_an_edited_result(comparison, tmp_path, data, capsys):
    out = Path(shutil.copytree(comparison[1], tmp_path / "cmp"))
    reference = json.loads((comparison[1] / "results.json").read_text())["methods"]["mirror"]
    path = out / "runs" / "mirror" / "seed0" / "result.json"
    edited = {**json.loads(path.read_text()), "final_top1": 99.0}  # valid JSON, plausible, wrong
    path.write_text(json.dumps(edited))
    again = _resume_comparison(comparison, out, data)["methods"]["mirror"]
    assert f"not using {path}: " in capsys.readouterr().out
    assert again["top1_mean"] == reference["top1_mean"] != 99.0
    assert read_result_json(path, require_checksum=True)["final_top1"] == reference["top1_mean"]


def test_result_file_checksum(tmp_path):
    path = tmp_path / "result.json"
    write_result_json(path, {"final_top1": 12.5, "curve": (1, 2)})
    assert read_result_json(path) == {"final_top1": 12.5, "curve": [1, 2]}
    text = path.read_text()
    path.write_text(text.replace("12.5", "12.6"))
    with pytest.raises(ResultFileError, match="does not match the SHA-256"):
        read_result_json(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ResultFileError, match="cannot read"):
        read_result_json(path)
    path.write_text(json.dumps({"final_top1": 1.0}))  # an older version's file: no checksum
    assert read_result_json(path) == {"final_top1": 1.0}
    with pytest.raises(ResultFileError, match="no checksum"):
        read_result_json(path, require_checksum=True)


# --- sr and lra comparisons: the same repro through the command line -----------------------------------------


def _smooth_images(folder: Path, sizes) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([np.sin(rng.uniform(3, 9) * xx) * np.cos(rng.uniform(3, 9) * yy) for _ in range(3)], -1)
        Image.fromarray(((img + 1) * 127.5).clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def sr_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr_data")
    _smooth_images(root / "train", [(40, 52), (44, 36)])
    _smooth_images(root / "test", [(34, 42), (26, 30)])
    return root


SR_TINY = ["--dataset", "folder", "--epochs", "2", "--train-subset", "8", "--batch-size", "4", "--image-size", "8",
           "--threads", "1", "--no-progress"]  # fmt: skip


def _sr_data_args(sr_data: Path) -> list[str]:
    return ["--data-dir", str(sr_data / "train"), "--eval-dir", str(sr_data / "test")]


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory, sr_data):
    run = tmp_path_factory.mktemp("sr_run") / "run"
    assert main(["sr", "train", *SR_TINY, *_sr_data_args(sr_data), "--attention", "mirror", "--out", str(run)]) == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sr", "lra"])
def test_task_compare_resume_without_result_and_with_a_torn_line(command, sr_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    if command == "sr":
        args = ["sr", "compare", *SR_TINY, *_sr_data_args(sr_data), "--attentions", "mirror", "--seeds", "0",
                "--latency-rounds", "1", "--jobs", "1", "--out", str(out)]  # fmt: skip
        folder, score = out, "psnr_mean"
    else:
        args = ["lra", "compare", "--tasks", "listops", "--attentions", "mirror", "--seeds", "0", "--epochs", "2",
                "--train-subset", "32", "--eval-subset", "16", "--batch-size", "8", "--max-len", "520", "--jobs", "1",
                "--threads", "1", "--cost-rounds", "1", "--no-progress", "--out", str(out)]  # fmt: skip
        folder, score = out / "listops", "top1_mean"
    assert main(args) == 0
    reference = json.loads((folder / "results.json").read_text())["methods"]["mirror"]
    run = folder / "runs" / "mirror" / "seed0"
    (run / "result.json").unlink()
    _damage(run / "metrics.jsonl", "torn")
    # With a checkpoint (sr compare keeps one) the run is rebuilt from it, else trained again (lra compare).
    has_checkpoint = (run / "checkpoints").is_dir()
    with pytest.warns(UserWarning, match="restored") if has_checkpoint else contextlib.nullcontext():
        assert main([*args, "--resume"]) == 0
    again = json.loads((folder / "results.json").read_text())["methods"]["mirror"]
    assert again[score] == reference[score]
    curve = "curve_crop_psnr" if command == "sr" else "curve_top1"
    assert again["runs"]["0"][curve] == reference["runs"]["0"][curve]


# --- full disk and read-only output: one line naming the path, no temporary file ------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """``make(full=..., read_only=...)``: a small tmpfs mounted under tmp_path (root only), unmounted after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def make(full: bool = False, read_only: bool = False, prepare=None) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        if prepare is not None:
            prepare(point)
        if full:  # fill it up to the last byte
            with contextlib.suppress(OSError), open(point / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            with contextlib.suppress(OSError), open(point / "filler", "ab", buffering=0) as fh:
                for _ in range(65536):
                    fh.write(b"\0")
                    fh.flush()
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_atomic_writer_on_a_full_and_a_read_only_disk(tmpfs):
    full = tmpfs(full=True, prepare=lambda p: (p / "kept.json").write_text('{"old": 1}'))
    with pytest.raises(OutputWriteError, match=rf"cannot write {re.escape(str(full))}/kept\.json: No space left"):
        atomic_write_bytes(full / "kept.json", b"x" * 100_000)
    assert (full / "kept.json").read_text() == '{"old": 1}'  # the previous content is intact
    _no_temp_files(full)
    ro = tmpfs(read_only=True)
    with pytest.raises(OutputWriteError, match=r"Read-only file system \[EROFS\]"):
        atomic_write_bytes(ro / "a.json", b"{}")
    with pytest.raises(OutputWriteError, match=r"Read-only file system"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        save_figure(plt.figure(), ro / "fig.png")
    assert plt.get_fignums() == []  # the figure is closed on the error too


def test_lra_compare_figure_on_a_full_disk_is_a_write_error(tmpfs):
    """The figure of the report (engine/lra_figures.py): an OutputWriteError naming the file, no temporary file."""
    from mirrorla.engine.lra_figures import plot_task

    run = {"curve_steps": [4, 8], "curve_top1": [10.0, 20.0], "by_length": []}
    method = {"top1_mean": 20.0, "top1_std": None, "step_s": 0.1, "runs": {"0": run}}
    results = {"task": "listops", "majority_top1": 10.0, "methods": {"mirror": method}}
    full = tmpfs(full=True)
    with pytest.raises(OutputWriteError, match=rf"{re.escape(str(full / 'accuracy.png'))}: No space left on device"):
        plot_task(full, results)
    _no_temp_files(full)


def _analyze_args(run: Path, images: Path, out: Path) -> list[str]:
    return ["analyze", str(run), "--images", str(images), "--num-images", "1", "--queries", "8", "--no-figures",
            "--threads", "1", "--out", str(out)]  # fmt: skip


def _command(name: str, target: Path, sr_run: Path, sr_data: Path) -> list[str]:
    """The command line of ``name`` writing under ``target``."""
    image, test = str(sr_data / "test" / "img1.png"), str(sr_data / "test")
    sr = [*SR_TINY, *_sr_data_args(sr_data)]
    one_run = ["--seeds", "0", "--jobs", "1", "--out", str(target / "cmp")]
    timing = ["--throughput-iters", "1", "--throughput-rounds", "1"]
    return {
        "train": ["train", "--attention", "softmax", *_train_cli(), "--out", str(target / "run")],
        "compare": ["compare", "--attentions", "softmax", *_train_cli(), *timing, *one_run],
        "sr train": ["sr", "train", *sr, "--attention", "mirror", "--out", str(target / "run")],
        "sr compare": ["sr", "compare", *sr, "--attentions", "mirror", *one_run],
        "sr upscale": ["sr", "upscale", str(sr_run), image, "--out", str(target / "up.png")],
        "sr eval --save-images": ["sr", "eval", str(sr_run), "--data", test, "--save-images", str(target / "imgs")],
        "sr eval --json": ["sr", "eval", str(sr_run), "--data", test, "--json", str(target / "e.json")],
        "analyze": _analyze_args(sr_run, sr_data / "test", target / "analysis"),
    }[name]


def _train_cli() -> list[str]:
    return ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--patch-size", "7",
            "--epochs", "1", "--batch-size", "16", "--train-subset", "32", "--eval-subset", "16", "--no-download",
            "--no-progress", "--threads", "1"]  # fmt: skip


COMMANDS = [pytest.param("train", marks=needs_fashion_mnist), pytest.param("compare", marks=needs_fashion_mnist),
            "sr train", "sr compare", "sr upscale", "sr eval --save-images", "sr eval --json", "analyze"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_commands_on_a_full_or_read_only_disk_fail_in_one_line(command, fault, tmpfs, sr_run, sr_data, capsys):
    target = tmpfs(full=fault == "full", read_only=fault == "read_only")
    capsys.readouterr()
    assert main(_command(command, target, sr_run, sr_data)) == 2
    err = _one_line_error(capsys)
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert str(target) in err and reason in err, err
    _no_temp_files(target)


def test_every_figure_and_text_output_goes_through_the_writer():
    """Figures are saved with save_figure, text with atomic_write_bytes: no direct savefig or write_text."""
    direct = []
    for path in SRC.rglob("*.py"):
        if path.name == "checkpoint.py" and path.parent.name == "engine":
            continue  # the writer itself
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.savefig\(|\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wa]b?['\"]", line):
                direct.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    allowed = (
        "engine/trainer.py",  # metrics.jsonl: an fsynced append, restored from the checkpoint on resume
        "engine/run_folder.py",  # the lock file, created with O_EXCL
        "data/",  # dataset caches and downloads (their own atomic writers)
        "still/hf.py",  # a Hugging Face checkpoint folder
        "still/pretrained.py",  # a cache entry written in a temporary folder, published with one rename
        "bench/memory.py",  # /proc/self/clear_refs
    )
    assert [d for d in direct if not d.startswith(allowed)] == []


# --- two writers ------------------------------------------------------------------------------------------------


def test_analyze_into_a_folder_another_process_writes_is_refused(tmp_path, sr_run, sr_data, capsys):
    out = tmp_path / "analysis"
    with FolderLock(out, purpose="analyze"):  # held by a live process (this one)
        assert main(_analyze_args(sr_run, sr_data / "test", out)) == 2
        err = _one_line_error(capsys)
        assert "is in use" in err and str(out / "run.lock") in err
    assert not (out / "analysis.json").exists()
    assert main(_analyze_args(sr_run, sr_data / "test", out)) == 0  # free again
    assert (out / "analysis.json").is_file() and not (out / "run.lock").exists()
    _no_temp_files(out)


def test_sr_eval_save_images_into_a_locked_folder_is_refused(tmp_path, sr_run, sr_data, capsys):
    out = tmp_path / "imgs"
    with FolderLock(out, purpose="sr eval --save-images"):
        assert main(["sr", "eval", str(sr_run), "--data", str(sr_data / "test"), "--save-images", str(out)]) == 2
        assert "is in use" in _one_line_error(capsys)
    assert not list(out.glob("*.png"))


def test_sr_upscale_never_replaces_a_file_created_while_it_ran(tmp_path, sr_run, sr_data, capsys, monkeypatch):
    from mirrorla.engine import sr as sr_engine

    dst = tmp_path / "up.png"
    real = sr_engine.upscale

    def upscale_while_another_writes(model, lr):
        dst.write_bytes(b"the other process's image")  # after the command's own check that dst is free
        return real(model, lr)

    monkeypatch.setattr(sr_engine, "upscale", upscale_while_another_writes)
    image = str(sr_data / "test" / "img1.png")
    assert main(["sr", "upscale", str(sr_run), image, "--out", str(dst)]) == 2
    assert "is not replaced" in _one_line_error(capsys)
    assert dst.read_bytes() == b"the other process's image"
    _no_temp_files(tmp_path)
    assert main(["sr", "upscale", str(sr_run), image, "--out", str(dst), "--overwrite"]) == 0
    assert Image.open(dst).size == (2 * 30, 2 * 26)


# --- what a killed run leaves behind ------------------------------------------------------------------------


def test_temp_file_of_a_kill_at_start_does_not_block_a_plain_restart(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.json.dbv4gpju.tmp").write_bytes(b'{"half')  # killed while writing config.json
    train(CFG.replace(epochs=1, out_dir=str(run)), data)
    assert (run / "final.json").is_file()
    _no_temp_files(run)


def test_overwrite_removes_every_output_of_the_previous_run(tmp_path):
    run = tmp_path / "run"
    (run / "sr_images").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "final.json", "test_images.json", "sr_images/a.png"):
        (run / name).write_text("old")
    (run / "notes.txt").write_text("mine")
    (run / ".test_images.json.abcd1234.tmp").write_text("half")
    with claim_run_folder(run, resume=False, overwrite=True):
        assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "run.lock"]


def test_sr_train_overwrite_and_resume_leave_no_stale_files(sr_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["sr", "train", *SR_TINY, *_sr_data_args(sr_data), "--attention", "mirror", "--out", str(run)]
    assert main(args) == 0
    (run / ".test_images.json.k2j4h5g6.tmp").write_text("half")  # a kill while writing it
    assert main(["sr", "train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "test_images.json").is_file()
    _no_temp_files(run)


def test_comparison_and_analysis_folders_are_cleaned_of_stray_temp_files(comparison, tmp_path, data, sr_run, sr_data):
    out = Path(shutil.copytree(comparison[1], tmp_path / "cmp"))
    strays = [out / ".results.json.a1b2c3d4.tmp", out / ".accuracy_curves.png.zz99yy88.tmp"]
    for path in strays:
        path.write_text("half")
    _resume_comparison(comparison, out, data)
    _no_temp_files(out)
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / ".analysis.json.q1w2e3r4.tmp").write_text("half")
    assert main(_analyze_args(sr_run, sr_data / "test", analysis)) == 0
    _no_temp_files(analysis)


@pytest.mark.slow
def test_train_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, data):
    """SIGKILL a training process after its first checkpoint; --resume ends where the uninterrupted run does."""
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[2]); from test_engine import TINY, tiny_data; "
        "from mirrorla.engine import TrainConfig, train; "
        f"cfg = TrainConfig.from_dict({{**json.loads(sys.argv[3]), 'out_dir': sys.argv[1]}}); "
        f"train(cfg, tiny_data({N_TRAIN}, {N_EVAL}))"
    )
    cfg = CFG.replace(epochs=3, threads=1)
    record = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "out_dir"})
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(run), str(Path(__file__).parent), record], env=env)
    pointer = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    while not pointer.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert pointer.is_file() and not (run / "final.json").exists(), "the run finished before it was killed"
    train(cfg.replace(out_dir=str(run), resume=str(run)), data)
    whole = tmp_path / "whole"
    train(cfg.replace(out_dir=str(whole)), data)
    got, want = (json.loads((r / "final.json").read_text()) for r in (run, whole))
    assert _eval_values(got) == _eval_values(want)
    _no_temp_files(run)


def test_errno_of_a_write_error_is_kept(tmp_path, monkeypatch):
    """The writer's OutputWriteError keeps the OSError's errno (compare's workers pickle it)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputWriteError) as info:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert info.value.errno == errno.ENOSPC and str(tmp_path / "a.json") in str(info.value)
    _no_temp_files(tmp_path)
