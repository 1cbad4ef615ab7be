"""Training engine: schedule, config validation, a real training run, exact resume, checkpoints, MACs."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from mirrorla.data import DatasetNotFoundError, InMemoryImages, build_datasets
from mirrorla.data.datasets import DatasetInfo
from mirrorla.engine import (
    CheckpointError,
    TrainConfig,
    count_macs,
    create_classifier,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
    warmup_cosine,
)
from mirrorla.engine import checkpoint as ckpt_mod

# Tiny ViT: 28×28, patch 7 → 16 tokens + cls, width 32, 2 blocks.
TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=7, mlp_ratio=2.0, progress=False, threads=None)


def tiny_data(n_train=384, n_eval=128):
    """Real Fashion-MNIST subsets when installed, else class templates + noise (same shapes)."""
    try:
        return build_datasets("fashion_mnist", train_subset=n_train, eval_subset=n_eval, download=False)
    except DatasetNotFoundError:
        g = torch.Generator().manual_seed(0)
        templates = torch.randint(0, 256, (10, 1, 28, 28), generator=g).float()

        def make(n):
            labels = torch.arange(n) % 10
            noise = torch.randn(n, 1, 28, 28, generator=g) * 60
            return (templates[labels] + noise).clamp(0, 255).to(torch.uint8), labels

        common = dict(mean=(0.5,), std=(0.3,), image_size=28)
        train_set = InMemoryImages(*make(n_train), augment=True, **common)
        eval_set = InMemoryImages(*make(n_eval), augment=False, **common)
        return train_set, eval_set, DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.3,), n_train, n_eval)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _metrics(history):
    """Everything but wall-clock measurements, which legitimately differ between runs."""
    return [{k: v for k, v in h.items() if "time" not in k and "img_s" not in k} for h in history]


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, total=100, warmup=10, lr=1.0, warmup_lr=0.01, min_lr=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.505) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5) and f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_config_validation():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="even batch_size"):
        TrainConfig(mixup=0.8, batch_size=7)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epochs": 1, "lr_typo": 3})
    cfg = TrainConfig(epochs=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_attention_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*mirror.*softmax"):
        create_classifier(TrainConfig(attention="no_such_attention"), 10, 1, 28)


def test_one_epoch_decreases_loss_and_writes_outputs(tmp_path, data, capsys):
    cfg = TrainConfig(
        attention="softmax", epochs=1, batch_size=16, lr=2e-3, warmup_epochs=0.0, out_dir=str(tmp_path), **TINY
    )
    torch.manual_seed(cfg.seed)
    untrained = create_classifier(cfg, 10, 1, 28)
    before = evaluate(untrained, data[1], cfg)["loss"]
    out = train(cfg, data)
    (record,) = out["history"]
    assert record["eval_loss"] < before - 0.1, (before, record["eval_loss"])
    assert record["eval_images"] == len(data[1]) and record["train_images"] == (len(data[0]) // 16) * 16
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["eval_top1"] == record["eval_top1"]
    assert json.loads((tmp_path / "config.json").read_text())["attention"] == "softmax"
    ck = load_checkpoint(tmp_path)
    assert ck["state"]["epoch"] == 0 and set(ck["model"]) == set(out["model"].state_dict())
    # The saved weights are the trained ones.
    model = create_classifier(cfg, 10, 1, 28)
    model.load_state_dict(ck["model"])
    assert evaluate(model, data[1], cfg)["top1"] == record["eval_top1"]
    # `mirrorla train --resume DIR` alone takes the run's settings; options given override them.
    from mirrorla.cli import build_parser
    from mirrorla.commands.train import config_from_args

    resumed_cfg = config_from_args(build_parser().parse_args(["train", "--resume", str(tmp_path)]))
    assert resumed_cfg == cfg.replace(resume=str(tmp_path))
    changed = config_from_args(build_parser().parse_args(["train", "--resume", str(tmp_path), "--lr", "0.5"]))
    assert changed.lr == 0.5 and changed.attention == "softmax"
    if data[2].name == "fashion_mnist":  # `mirrorla eval` rebuilds the same subset from the saved config
        from mirrorla.cli import main

        capsys.readouterr()
        assert main(["eval", str(tmp_path), "--eval-subset", str(len(data[1])), "--device", "cpu", "--json"]) == 0
        printed = capsys.readouterr().out.strip().splitlines()  # a start line, a result line, the JSON (--json)
        assert printed[0].startswith("evaluating vit with attention softmax") and printed[1].startswith("result: ")
        assert json.loads(printed[-1])["top1"] == record["eval_top1"]


class _Crash(Exception):
    pass


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    # EMA and Mixup/CutMix on, so their state (EMA weights, numpy RNG) takes part in the check.
    cfg = TrainConfig(
        attention="mirror", epochs=2, batch_size=32, lr=2e-3, ema_decay=0.9, mixup=0.8, cutmix=1.0,
        drop_path=0.1, **TINY,
    )  # fmt: skip
    data = tiny_data(192, 64)
    full = train(cfg.replace(out_dir=str(tmp_path / "full")), data)

    # Crash in the middle of the second epoch: the checkpoint of epoch 0 is the last complete one.
    calls = {"n": 0}
    original = InMemoryImages.get_batch
    steps_per_epoch = len(data[0]) // 32

    def crashing(self, idx):
        calls["n"] += 1
        if self is data[0] and calls["n"] > steps_per_epoch + 3:
            raise _Crash
        return original(self, idx)

    monkeypatch.setattr(InMemoryImages, "get_batch", crashing)
    with pytest.raises(_Crash):
        train(cfg.replace(out_dir=str(tmp_path / "cut")), data)
    monkeypatch.setattr(InMemoryImages, "get_batch", original)
    assert load_checkpoint(tmp_path / "cut")["state"]["epoch"] == 0

    resumed = train(cfg.replace(out_dir=str(tmp_path / "cut"), resume=str(tmp_path / "cut")), data)
    assert _metrics(resumed["history"]) == _metrics(full["history"])
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert _metrics(lines) == _metrics(full["history"])
    for (k, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # A resume with different settings is refused.
    with pytest.raises(ValueError, match="lr: checkpoint"):
        train(cfg.replace(lr=1e-3, out_dir=str(tmp_path / "cut"), resume=str(tmp_path / "cut")), data)


def _save_two(tmp_path):
    model = torch.nn.Linear(4, 3)
    for epoch in (0, 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        save_checkpoint(tmp_path, epoch, model.state_dict(), {"config": {}, "global_step": epoch}, keep=2)
    return model


@pytest.mark.parametrize("which", ["safetensors", "state.pt"])
def test_truncated_checkpoint_clear_error(tmp_path, which):
    _save_two(tmp_path)
    path = tmp_path / f"epoch0001.{which}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)
    # Through the training entry point too: a clear CheckpointError, not a torch internals error.
    with pytest.raises(CheckpointError, match=str(path.name)):
        train(TrainConfig(resume=str(path), **TINY), tiny_data(64, 32))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = _save_two(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".state.pt"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model.state_dict(), {"config": {}, "global_step": 2})
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    # The pointer still names epoch 1, whose files are intact; no temporary files are left behind.
    ck = load_checkpoint(tmp_path)
    assert ck["state"]["epoch"] == 1 and torch.all(ck["model"]["weight"] == 1)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_mismatched_pair(tmp_path):
    _save_two(tmp_path)
    (tmp_path / "epoch0001.safetensors").write_bytes((tmp_path / "epoch0000.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "epoch0001.safetensors")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_is_finite(amp, data):
    cfg = TrainConfig(attention="mirror", epochs=1, batch_size=64, amp=amp, **TINY)
    out = train(cfg, (data[0], data[1], data[2]))
    r = out["history"][0]
    assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"])


def test_macs_match_analytic_count():
    cfg = TrainConfig(attention="softmax", **TINY)
    model = create_classifier(cfg, 10, 1, 28)
    fused_before = [m.fused for m in model.modules() if hasattr(m, "fused")]
    macs, counter = count_macs(model, 1, 28)
    assert "FlopCounterMode" in counter
    assert [m.fused for m in model.modules() if hasattr(m, "fused")] == fused_before  # restored
    C, N, P, hidden, depth = 32, 17, 16, 64, 2
    block = 3 * C * C * N + C * C * N + 2 * N * N * C + 2 * C * hidden * N  # qkv, proj, QKᵀ + AV, MLP
    expected = P * C * 7 * 7 + depth * block + C * 10  # patch embedding, blocks, head
    assert macs == expected
    linear = create_classifier(cfg.replace(attention="linear_relu"), 10, 1, 28)
    lin_macs, _ = count_macs(linear, 1, 28)
    d, heads = C // 2, 2
    # Per head: φKᵀV (N·d·d) and φQ(φKᵀV) (N·d·d) replace QKᵀ and AV, and the denominator φQ·z̄ is a
    # matrix-vector product (N·d); the key sum z̄ is no matmul.
    assert lin_macs == expected - depth * 2 * N * N * C + depth * heads * (2 * N * d * d + N * d)
