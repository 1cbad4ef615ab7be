"""Weights shipped with the package (mirrorla.weights): provenance, loading through timm's pretrained=True and
through the command line's ``pretrained:<name>``, and the recorded scores (cheap check by default, the full
test-set score in the slow test)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import needs_fashion_mnist

import mirrorla  # noqa: F401  (registers the models)
from mirrorla.cli import main
from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint
from mirrorla.engine.config import BASE, TrainConfig
from mirrorla.tasks import create_task
from mirrorla.tasks.classification import create_classifier
from mirrorla.weights import PREFIX, get_weights, list_weights
from mirrorla.weights.check import CHECK_TOLERANCE, check_score

SHIPPED = list_weights()
FMNIST = [n for n in SHIPPED if get_weights(n).meta["task"] == "classification"]
SR = [n for n in SHIPPED if get_weights(n).meta["task"] == "super_resolution"]
ROOT = Path(__file__).resolve().parent.parent


def test_weights_are_shipped_for_both_tasks():
    # MirrorLA for both tasks; the others shipped are listed in the provenance files (see test below).
    assert "vit_micro_mirror.fmnist" in FMNIST and "sr_tiny_mirror.photos_x2" in SR, SHIPPED
    assert all(re.fullmatch(r"vit_micro_\w+\.fmnist", n) for n in FMNIST)
    assert all(re.fullmatch(r"sr_tiny_\w+\.photos_x2", n) for n in SR)
    # timm sees the classifiers' weights: listed as pretrained, and their cfgs point at the shipped files. The SR
    # networks are not timm models (docs/models.md): their weights load by name through the command line and
    # mirrorla.engine.sr.load_trained_sr("pretrained:<name>").
    listed = set(timm.list_pretrained("*"))
    for name in FMNIST:
        assert name in listed
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.has_weights and Path(cfg.file) == get_weights(name).file
    assert not any(name in listed for name in SR) and not timm.list_models("sr_*")


def test_non_editable_installs_get_the_weights():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"mirrorla\.weights"\s*=\s*\[[^]]*"\*/\*\.safetensors"[^]]*"\*/\*\.json"', text), text


@pytest.mark.parametrize("name", SHIPPED)
def test_provenance_is_complete_and_matches_the_file(name):
    w = get_weights(name)
    meta = w.meta
    data = w.file.read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["bytes"] == len(data)
    assert len(data) < 1_000_000  # small enough to ship
    assert re.fullmatch(r"[0-9a-f]{40}", meta["commit"]) and meta["dirty"] is False
    assert meta["command"].startswith("mirrorla ")
    assert re.search(rf"--attentions? {meta['attention']} ", meta["command"])
    assert meta["seed"] == 0 and meta["environment"]["cpu_capability"] and meta["machine"]
    assert isinstance(meta["result"]["value"], float) and meta["result"]["data"]
    cfg = TrainConfig.from_dict(meta["config"])
    assert cfg.attention == meta["attention"] and cfg.task == meta["task"] and cfg.seed == 0
    assert meta["timm_model"] == name.split(".")[0] and name.endswith(f"_{meta['attention']}.{w.tag}")


def test_vit_micro_is_the_model_compare_trains():
    # Same parameter names and shapes as the classifier of a `mirrorla compare` run, so its checkpoints load.
    for attention in ("mirror", "softmax", "pola"):
        ours = timm.create_model(f"vit_micro_{attention}")
        run = create_classifier(BASE.replace(attention=attention), 10, 1, 28)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in run.state_dict().items()}
        assert ours(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _loaded(name: str) -> torch.nn.Module:
    """The shipped weights loaded without the command line's path: timm's pretrained=True for the classifiers,
    the SR network built by create_model with the file's tensors for SR (not a timm model)."""
    if name in FMNIST:
        return timm.create_model(name, pretrained=True).eval()
    from safetensors.torch import load_file

    from mirrorla.models import create_model

    config = get_weights(name).meta["config"]
    net = create_model(config["model"], attention=config["attention"], scale=config["scale"])
    net.load_state_dict(load_file(get_weights(name).file))
    return net.eval()


def _cli_model(name: str) -> torch.nn.Module:
    """The model the command line builds for ``pretrained:<name>`` (eval, analyze, sr eval, sr upscale)."""
    ckpt = load_checkpoint(PREFIX + name, weights_only=True)
    cfg = checkpoint_config(ckpt, PREFIX + name)
    task = create_task(cfg.task, cfg)
    if cfg.task == "classification":
        model = create_classifier(cfg, 10, 1, 28)
    else:
        model = task.build_model(cfg, None)
    model.load_state_dict(ckpt["model"])
    return model.eval()


@pytest.mark.parametrize("name", SHIPPED)
def test_timm_and_the_cli_load_the_same_weights(name):
    net = _loaded(name)
    cli = _cli_model(name)
    ours, theirs = net.state_dict(), cli.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    if name in FMNIST:  # the default tag of the model name is the shipped one
        plain = timm.create_model(name.split(".")[0], pretrained=True).state_dict()
        assert all(torch.equal(ours[k], plain[k]) for k in ours)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_fashion_mnist) if n in FMNIST else n for n in SHIPPED])
def test_shipped_weights_score_their_recorded_check(name):
    # The top-1 on the first 500 Fashion-MNIST test images, or the PSNR of a crop of a test photo, recomputed
    # from the weights loaded through timm: a loading path that changed any weight would move it.
    meta = get_weights(name).meta
    net = _loaded(name)
    got = check_score(net, meta["task"], meta["config"])
    assert abs(got - meta["check"]["value"]) <= CHECK_TOLERANCE[meta["task"]], (got, meta["check"])


def test_pretrained_true_without_shipped_weights_raises_and_lists_them():
    with pytest.raises(ValueError, match="no pretrained weights exist") as err:
        timm.create_model("vit_micro_pola", pretrained=True)
    assert SHIPPED[0] in str(err.value)


def test_models_pretrained_lists_the_shipped_weights(capsys):
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    assert all(" on the " in line and "; mirrorla " in line for line in lines)


def test_unknown_pretrained_name_is_one_line(capsys):
    assert main(["eval", "pretrained:vit_micro_nothing.fmnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no shipped weights named 'vit_micro_nothing.fmnist'" in err[0] and SHIPPED[0] in err[0]


@needs_fashion_mnist
def test_eval_of_shipped_weights_prints_lines_and_json(capsys):
    name = FMNIST[0]
    assert main(["eval", PREFIX + name, "--eval-subset", "200", "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"evaluating vit with attention {get_weights(name).meta['attention']} (weights of ")
    assert "200 eval images" in out[0] and "cpu, " in out[0]
    assert out[1].startswith("result: top-1 ") and "% on 200 images" in out[1]
    record = json.loads(out[-1])
    assert record["count"] == 200 and 0 <= record["top1"] <= 100


def test_sr_upscale_with_shipped_weights(tmp_path, capsys):
    from PIL import Image

    from mirrorla.engine.sr import upscale

    name = SR[0]
    lr = torch.randint(0, 256, (3, 14, 18), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    src = tmp_path / "small.png"
    Image.fromarray(lr.permute(1, 2, 0).numpy()).save(src)
    dst = tmp_path / "big.png"
    assert main(["sr", "upscale", PREFIX + name, str(src), "--out", str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "small.png (14×18, 252 tokens per attention layer, one pass)" in printed
    got = torch.from_numpy(np.array(Image.open(dst))).permute(2, 0, 1)
    assert got.shape == (3, 28, 36)
    assert torch.equal(got, upscale(_loaded(name), lr))


@needs_fashion_mnist
def test_analyze_shipped_weights(tmp_path):
    out = tmp_path / "a"
    assert main(["analyze", PREFIX + FMNIST[0], "--num-images", "2", "--no-figures", "--out", str(out)]) == 0
    assert (out / "summary.md").is_file() and (out / "analysis.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_rescore_their_published_result(name):
    """The full score each shipped run recorded: Fashion-MNIST's whole test split, or every test photo whole."""
    meta = get_weights(name).meta
    net = _loaded(name)
    if meta["task"] == "classification":
        from mirrorla.data import build_datasets

        _, test, _ = build_datasets("fashion_mnist", augment=False, train_subset=1, download=False)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test), 1000):
                x, y = test.get_batch(torch.arange(i, min(i + 1000, len(test))))
                correct += int((net(test.prepare_batch(x)).argmax(-1) == y).sum())
        got, tol = 100.0 * correct / len(test), 0.05  # a few flipped predictions across SIMD levels at most
    else:
        from mirrorla.data.sr import load_pairs
        from mirrorla.engine.sr import evaluate_images, mean_scores

        cfg = meta["config"]
        rows = evaluate_images(net, load_pairs("photos", "test", cfg["scale"], cfg["degradation"]), cfg["scale"])
        got, tol = mean_scores(rows)["psnr"], 0.01
    assert abs(got - meta["result"]["value"]) <= tol, (got, meta["result"])
