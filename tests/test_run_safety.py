"""Data safety of a training run: a checksummed optimizer state, checkpoints that belong to their run,
interrupted writes (torn metrics, leftover temporaries and orphan checkpoints), disk and permission
errors, and the mode of written files."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat

import pytest
import torch
from test_engine import TINY, tiny_data

from mirrorla.cli import main
from mirrorla.engine import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train
from mirrorla.engine import checkpoint as ckpt_mod
from mirrorla.engine import trainer as trainer_mod
from mirrorla.engine.checkpoint import atomic_write_bytes

N_TRAIN, N_EVAL = 192, 64
# Subsets recorded in the config, so `mirrorla train --resume` rebuilds the same (small) data.
CFG = TrainConfig(
    attention="softmax", epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.0, train_subset=N_TRAIN,
    eval_subset=N_EVAL, download=False, **TINY,
)  # fmt: skip
# The same run on the command line.
CLI_ARGS = [
    "train", "--attention", "softmax", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--patch-size", "7",
    "--mlp-ratio", "2.0", "--epochs", "2", "--batch-size", "32", "--lr", "2e-3", "--warmup-epochs", "0",
    "--train-subset", str(N_TRAIN), "--eval-subset", str(N_EVAL), "--no-download", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return tiny_data(N_TRAIN, N_EVAL)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data):
    """A finished 2-epoch run with the checkpoints of epochs 0 and 1; tests work on copies."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(CFG.replace(out_dir=str(run)), data)
    return run


def _copy(run, tmp_path, name="run"):
    return shutil.copytree(run, tmp_path / name)


def _resume_from_epoch0(run, data, **changes):
    """Continue ``run`` from its epoch-0 checkpoint (retrains epoch 1 and saves it again)."""
    resume = str(run / "checkpoints" / "epoch0000.safetensors")
    return train(CFG.replace(out_dir=str(run), resume=resume, **changes), data)


def _cli_error(capsys) -> str:
    """The CLI's stderr, which must be exactly one line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert re.match(r"mirrorla \w+: error: ", err) and "\n" not in err and "Traceback" not in err, err
    return err


# --- integrity of the optimizer state ----------------------------------------------------------------------


def test_flipped_bytes_in_optimizer_state_are_refused(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    state_path = run / "checkpoints" / "epoch0001.state.pt"
    moments = [s["exp_avg"] for s in load_checkpoint(run)["state"]["optimizer"]["state"].values()]
    exp_avg = next(m for m in moments if m.numel() >= 16 and m.abs().min() > 0)
    blob = bytearray(state_path.read_bytes())
    at = blob.find(exp_avg.numpy().tobytes())
    assert at >= 0, "the Adam moment's bytes were not found in the state file"
    blob[at + 16 : at + 32] = bytes(b ^ 0xFF for b in blob[at + 16 : at + 32])
    state_path.write_bytes(bytes(blob))
    # torch itself reads the damaged file without complaint: only a checksum can notice.
    reread = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    assert any(
        not torch.equal(s["exp_avg"], m) for s, m in zip(reread["optimizer"]["state"].values(), moments, strict=True)
    )
    with pytest.raises(CheckpointError, match=r"epoch0001\.state\.pt.*truncated or corrupt"):
        load_checkpoint(run)
    with pytest.raises(CheckpointError, match=r"epoch0001\.state\.pt"):
        load_checkpoint(state_path)
    assert main([*CLI_ARGS, "--resume", str(run)]) == 2
    assert str(state_path) in _cli_error(capsys)


def test_state_file_of_another_checkpoint_is_refused(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    ckpt = run / "checkpoints"
    shutil.copyfile(ckpt / "epoch0000.state.pt", ckpt / "epoch0001.state.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(run)


def _write_format1_checkpoint(directory, model_state):
    """A checkpoint as mirrorla wrote it before the state file had a checksum."""
    from safetensors.torch import save

    weights = save(model_state, metadata={"format": "mirrorla-checkpoint-1", "epoch": "0"})
    (directory / "epoch0000.safetensors").write_bytes(weights)
    state = {"config": {}, "format": "mirrorla-checkpoint-1", "epoch": 0, "weights_sha256": "0" * 64}
    state["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    buf = io.BytesIO()
    torch.save(state, buf)
    (directory / "epoch0000.state.pt").write_bytes(buf.getvalue())
    pointer = {"epoch": 0, "weights": "epoch0000.safetensors", "state": "epoch0000.state.pt"}
    (directory / "last.json").write_text(json.dumps(pointer))


def test_old_checkpoint_without_state_checksum_loads_with_warning(tmp_path):
    model = torch.nn.Linear(4, 3)
    _write_format1_checkpoint(tmp_path, model.state_dict())
    with pytest.warns(UserWarning, match=r"epoch0000\.state\.pt.*no checksum"):
        ck = load_checkpoint(tmp_path)
    assert ck["state"]["epoch"] == 0 and torch.equal(ck["model"]["weight"], model.weight.detach())
    # The weights of an old checkpoint are still checked against the state file.
    (tmp_path / "epoch0000.safetensors").write_bytes(
        (tmp_path / "epoch0000.safetensors").read_bytes().replace(b'"epoch":"0"', b'"epoch":"9"')
    )
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_model_is_refused(finished_run, tmp_path, data, capsys):
    run = _copy(finished_run, tmp_path)
    other = tmp_path / "other"
    train(CFG.replace(attention="linear_relu", embed_dim=48, epochs=1, out_dir=str(other)), data)
    config_before = (run / "config.json").read_text()
    for path in (other / "checkpoints").iterdir():  # a self-consistent pair (and pointer) copied in
        shutil.copyfile(path, run / "checkpoints" / path.name)
    assert main([*CLI_ARGS, "--resume", str(run), "--out", str(run)]) == 2
    err = _cli_error(capsys)
    for part in ("epoch0000.state.pt", str(run / "config.json"), "attention", "'linear_relu'", "embed_dim"):
        assert part in err, (part, err)
    assert (run / "config.json").read_text() == config_before
    # The Python API refuses it the same way, naming the files.
    with pytest.raises(CheckpointError, match=r"config\.json"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)


def test_weights_of_another_shape_are_a_clear_error(finished_run, tmp_path, data):
    """Weights that do not fit the model of the recorded settings: a CheckpointError, not torch's traceback."""
    from mirrorla.engine import create_classifier

    run = _copy(finished_run, tmp_path)
    ck = load_checkpoint(run)
    wider = create_classifier(CFG.replace(embed_dim=48), 10, 1, 28)
    save_checkpoint(run / "checkpoints", 1, wider.state_dict(), ck["state"])
    with pytest.raises(CheckpointError, match=r"epoch0001\.safetensors does not fit the model.*shape"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)


@pytest.mark.parametrize("change", ["moved", "swapped"])
def test_optimizer_groups_of_another_layout_are_refused(finished_run, tmp_path, data, change):
    """A state written by a version that grouped the parameters differently (no recorded names)."""
    run = _copy(finished_run, tmp_path)
    ck = load_checkpoint(run)
    state = ck["state"]
    state.pop("param_group_names", None)
    no_decay, decay = (g["params"] for g in state["optimizer"]["param_groups"])
    if change == "moved":  # e.g. a parameter that used to be decayed and no longer is
        no_decay.append(decay.pop(0))
    else:  # same group sizes, different members
        no_decay[0], decay[0] = decay[0], no_decay[0]
    save_checkpoint(run / "checkpoints", 1, ck["model"], state)
    with pytest.raises(CheckpointError, match=r"epoch0001\.state\.pt.*parameter group"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)


def test_optimizer_group_names_are_checked(finished_run, tmp_path, data):
    run = _copy(finished_run, tmp_path)
    ck = load_checkpoint(run)
    names = ck["state"]["param_group_names"]
    assert [len(g) for g in names] == [len(g["params"]) for g in ck["state"]["optimizer"]["param_groups"]]
    names[1][0] = "blocks.0.renamed.weight"
    save_checkpoint(run / "checkpoints", 1, ck["model"], ck["state"])
    with pytest.raises(CheckpointError, match="renamed"):
        train(CFG.replace(out_dir=str(run), resume=str(run)), data)


# --- interrupted writes ------------------------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_with_warning(finished_run, tmp_path, data):
    run = _copy(finished_run, tmp_path)
    metrics = run / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"epoch": 2, "step": 18, "lr": 0.00')  # the crash came in the middle of a line
    with pytest.warns(UserWarning, match=r"metrics\.jsonl"):
        out = _resume_from_epoch0(run, data)
    lines = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and lines == out["history"]


def test_corrupt_metrics_line_in_the_middle_is_restored_from_the_checkpoint(finished_run, tmp_path, data):
    run = _copy(finished_run, tmp_path)
    metrics = run / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(first[:20] + "\n" + second + "\n")
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: restored .*\(line 1 is not a record"):
        _resume_from_epoch0(run, data)
    assert metrics.read_text().splitlines()[0] == first  # the checkpoint carries the run's history


def test_corrupt_metrics_line_in_the_middle_is_an_error_for_old_checkpoints(finished_run, tmp_path, data):
    """A checkpoint written before the state carried the history cannot restore a damaged line."""
    run = _copy(finished_run, tmp_path)
    ck = load_checkpoint(run / "checkpoints" / "epoch0000.safetensors")
    del ck["state"]["history"]
    save_checkpoint(run / "checkpoints", 0, ck["model"], ck["state"], keep=3)
    metrics = run / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(first[:20] + "\n" + second + "\n")
    before = metrics.read_text()
    with pytest.raises(ValueError, match=r"metrics\.jsonl is damaged: line 1"):
        _resume_from_epoch0(run, data)
    assert metrics.read_text() == before  # nothing is rewritten


def test_leftovers_are_cleaned_on_resume(finished_run, tmp_path, data):
    run = _copy(finished_run, tmp_path)
    ckpt = run / "checkpoints"
    leftovers = [
        run / ".config.json.ab12cd34.tmp",
        run / ".metrics.jsonl.x_9y8z7w.tmp",
        ckpt / ".epoch0002.state.pt.q1w2e3r4.tmp",
        ckpt / ".last.json.zzzz1111.tmp",
        ckpt / "epoch0007.safetensors",  # a newer half-written checkpoint last.json never pointed to
    ]
    users = [run / "notes.txt", run / ".mine.tmp", ckpt / "README"]
    for path in leftovers + users:
        path.write_bytes(b"x")
    _resume_from_epoch0(run, data)
    assert [p.name for p in leftovers if p.exists()] == []
    assert all(p.read_bytes() == b"x" for p in users)
    assert load_checkpoint(run)["state"]["epoch"] == 1 and (ckpt / "epoch0000.state.pt").is_file()


def _pairs(directory, epochs, pointer):
    model = torch.nn.Linear(2, 2)
    for epoch in epochs:
        save_checkpoint(directory, epoch, model.state_dict(), {"config": {}}, keep=100)
    save_checkpoint(directory, pointer, model.state_dict(), {"config": {}}, keep=100)
    return directory


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_clean_run_dir_removes_orphans_only(tmp_path):
    ckpt = _pairs(tmp_path / "run" / "checkpoints", range(5), pointer=3)
    (ckpt / "epoch0000.safetensors").unlink()  # a prune interrupted half-way through a pair
    (ckpt / "epoch0004.state.pt").unlink()  # a newer pair half written, never pointed to
    removed = ckpt_mod.clean_run_dir(tmp_path / "run", keep=2)
    assert _names(ckpt) == [
        "epoch0002.safetensors", "epoch0002.state.pt", "epoch0003.safetensors", "epoch0003.state.pt", "last.json",
    ]  # fmt: skip
    assert sorted(p.name for p in removed) == [
        "epoch0000.state.pt", "epoch0001.safetensors", "epoch0001.state.pt", "epoch0004.safetensors",
    ]  # fmt: skip
    assert load_checkpoint(ckpt)["state"]["epoch"] == 3


def test_clean_run_dir_keeps_what_it_must(tmp_path):
    # The pointed-to checkpoint survives even keep=1 with an older protected one (the one resumed from).
    ckpt = _pairs(tmp_path / "a" / "checkpoints", range(4), pointer=3)
    ckpt_mod.clean_run_dir(tmp_path / "a", keep=1, protect=[ckpt / "epoch0000.safetensors"])
    assert [n for n in _names(ckpt) if n.endswith(".safetensors")] == ["epoch0000.safetensors", "epoch0003.safetensors"]
    # Without a readable last.json nothing but temporary files is touched.
    ckpt = _pairs(tmp_path / "b" / "checkpoints", range(3), pointer=2)
    (ckpt / "last.json").write_text("{not json")
    (ckpt / ".epoch0003.safetensors.abcd0000.tmp").write_bytes(b"")
    names = _names(ckpt)
    ckpt_mod.clean_run_dir(tmp_path / "b", keep=1)
    assert _names(ckpt) == [n for n in names if not n.endswith(".tmp")]


def test_save_never_prunes_the_checkpoint_it_points_to(tmp_path):
    # Resuming from an older checkpoint while newer ones exist: the new save must survive its own prune.
    ckpt = _pairs(tmp_path, range(4), pointer=3)
    model = torch.nn.Linear(2, 2)
    save_checkpoint(ckpt, 1, model.state_dict(), {"config": {}}, keep=2)
    assert load_checkpoint(ckpt)["state"]["epoch"] == 1
    assert (ckpt / "epoch0000.safetensors").is_file()


# --- disk and permission errors ----------------------------------------------------------------------------


def _fail_replace(monkeypatch, name, code, on_call=1):
    """``os.replace`` onto a file called ``name`` raises OSError(code) at its ``on_call``-th call."""
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if os.path.basename(dst) == name:
            calls["n"] += 1
            if calls["n"] == on_call:
                raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _fail_append(monkeypatch, name, code, on_call=1):
    """Appending to a file called ``name`` from the trainer raises OSError(code) at the ``on_call``-th open."""
    calls = {"n": 0}

    def fake_open(file, mode="r", *args, **kwargs):
        if os.path.basename(file) == name and "a" in mode:
            calls["n"] += 1
            if calls["n"] == on_call:
                raise OSError(code, os.strerror(code), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    "target, code, on_call, kept_epoch",
    [  # files written every epoch fail at their second write, so that the first epoch's checkpoint exists
        ("checkpoints/epoch0001.state.pt", errno.ENOSPC, 1, 0),
        ("checkpoints/epoch0001.safetensors", errno.EDQUOT, 1, 0),
        ("checkpoints/last.json", errno.ENOSPC, 2, 0),
        ("metrics.jsonl", errno.EACCES, 2, 0),
        ("final.json", errno.EROFS, 1, 1),
        ("config.json", errno.EROFS, 1, None),
    ],
)
def test_disk_and_permission_errors_are_one_line(tmp_path, monkeypatch, capsys, target, code, on_call, kept_epoch):
    run = tmp_path / "run"
    name = os.path.basename(target)
    fail = _fail_append if name == "metrics.jsonl" else _fail_replace
    fail(monkeypatch, name, code, on_call=on_call)
    assert main([*CLI_ARGS, "--out", str(run)]) == 2
    err = _cli_error(capsys)
    assert str(run / target) in err and os.strerror(code) in err, err
    assert "--resume" in err or "--out" in err, err  # says what to do
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    if kept_epoch is None:
        assert not (run / "checkpoints").exists()
    else:
        assert load_checkpoint(run)["state"]["epoch"] == kept_epoch  # the previous checkpoint is intact


# --- file modes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        save_checkpoint(tmp_path / "checkpoints", 0, torch.nn.Linear(2, 2).state_dict(), {"config": {}})
        (tmp_path / "plain.txt").write_text("")  # how the other outputs are created
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for path in [tmp_path / "a.json", *(tmp_path / "checkpoints").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_write_error_survives_pickling():
    """compare's worker processes send the trainer's errors back pickled."""
    import pickle

    err = ckpt_mod.output_write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "/r/checkpoints/last.json")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ckpt_mod.OutputWriteError and str(again) == str(err) and again.errno == errno.ENOSPC
    assert "/r/checkpoints/last.json" in str(again) and "--out" in str(again)
    assert ckpt_mod.output_write_error(OSError(errno.EIO, "Input/output error", "/x")) is None  # not for the user


def test_compare_worker_disk_error_keeps_its_kind():
    """A full disk in a compare worker process reaches the CLI as a one-line OutputWriteError, not a RuntimeError."""
    import errno as _errno

    from mirrorla.engine.checkpoint import OutputWriteError, output_write_error
    from mirrorla.engine.compare import worker_error
    from mirrorla.engine.config import TrainConfig

    cfg = TrainConfig(attention="mirror", seed=1)
    disk = OutputWriteError.from_os_error("/runs/x/config.json", OSError(_errno.ENOSPC, "No space left on device"))
    err = worker_error(cfg, disk)
    assert isinstance(err, OutputWriteError) and err.filename == "/runs/x/config.json"
    assert "mirror seed 1" in str(err) and "No space left" in str(err) and "\n" not in str(err)
    assert output_write_error(err) is not None  # what the CLI's error handler turns into one line, exit 2
    assert type(worker_error(cfg, ValueError("bad"))) is ValueError
    assert type(worker_error(cfg, KeyError("x"))) is RuntimeError
