"""The super-resolution network, task and commands (data and metrics: test_sr_data.py, test_sr_metrics.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mirrorla import list_attentions
from mirrorla.commands import main
from mirrorla.engine.config import SR_BASE
from mirrorla.models import create_model
from mirrorla.models.sr import SR_SIZES, SuperResolutionNet


@pytest.mark.parametrize("attention", list_attentions())
def test_every_attention_forward_backward_any_size(attention):
    torch.manual_seed(0)
    model = create_model("sr_tiny", attention=attention, scale=3, img_skip=None)
    x = torch.rand(2, 3, 7, 11)  # odd and non-square
    y = model(x)
    assert y.shape == (2, 3, 21, 33)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_scales_and_untrained_net_is_bicubic(scale):
    torch.manual_seed(0)
    model = create_model("sr_tiny", attention="mirror", scale=scale).eval()
    x = torch.rand(1, 3, 9, 6)
    bicubic = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(model(x), bicubic, rtol=0, atol=0)


def test_attention_gets_the_lr_grid():
    model = create_model("sr_tiny", attention="nala", scale=2)
    seen = []
    attn = model.groups[0].blocks[0].attn
    attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["hw"]), with_kwargs=True)
    model(torch.rand(1, 3, 5, 9))
    assert seen == [(5, 9)]


def test_sizes_and_timm_names():
    import timm

    params = {s: sum(p.numel() for p in create_model(f"sr_{s}", attention="mirror").parameters()) for s in SR_SIZES}
    assert params["tiny"] < params["small"] < params["light"]
    assert 0.5e6 < params["light"] < 1.0e6  # the published light SR size
    model = create_model("sr_tiny_flatten", scale=4)
    assert isinstance(model, SuperResolutionNet) and model.scale == 4 and model.attention == "flatten"
    # Image-to-image networks are not timm models: not registered with timm (issue 34).
    assert not timm.list_models("sr_*") and not timm.is_model("sr_tiny_flatten")
    with pytest.raises(ValueError, match="already fixes its attention"):
        create_model("sr_tiny_flatten", attention="mirror")
    create_model("sr_light", attention="nala")  # its RoPE needs head_dim % 4 == 0


def test_model_errors():
    with pytest.raises(ValueError, match="needs an attention"):
        create_model("sr_tiny")
    with pytest.raises(ValueError, match="scale must be one of"):
        create_model("sr_tiny", attention="mirror", scale=5)
    with pytest.raises(ValueError, match="unknown attention"):
        create_model("sr_tiny", attention="nope")
    model = create_model("sr_tiny", attention="mirror")
    with pytest.raises(ValueError, match=r"expects LR images \(B, 3, h, w\)"):
        model(torch.rand(3, 8, 8))


def test_weight_decay_excludes_mirror_angles():
    from mirrorla.engine.optim import decay_groups

    model = create_model("sr_tiny", attention="mirror")
    no_decay = {id(p) for p in decay_groups(model, 0.05)[0]["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in no_decay and p.dim() > 1]
    assert names and all(n.split(".")[-1] in ("theta", "alpha", "u_c") for n in names), names


# -- commands, end to end on generated images ----------------------------------------------------------


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(rng.uniform(3, 9) * xx + rng.uniform(0, 3)) * np.cos(rng.uniform(3, 9) * yy) for _ in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr_images")
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(40, 52), (44, 36), (48, 48)]), ("test", [(34, 42), (38, 30)])):
        (root / split).mkdir()
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(_smooth_image(rng, h, w)).save(root / split / f"img{i}.png")
    return root


TINY = ["--dataset", "folder", "--epochs", "1", "--train-subset", "8", "--batch-size", "4", "--image-size", "8"]


def test_sr_train_eval_upscale_end_to_end(image_folders, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--data-dir", str(image_folders / "train"), "--eval-dir", str(image_folders / "test")]
    argv = ["sr", "train", *TINY, *data, "--attention", "linear_relu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| img0 | 17×21 |" in out and f"run folder {run}" in out
    assert out.startswith("training sr_tiny with attention linear_relu on ") and "over bicubic" in out
    rows = json.loads((run / "test_images.json").read_text())
    assert [r["image"] for r in rows["model"]] == ["img0", "img1"]

    assert (
        main(["sr", "eval", str(run), "--data", str(image_folders / "test"), "--save-images", str(tmp_path / "o")]) == 0
    )
    out = capsys.readouterr().out
    assert "| mean |" in out and (tmp_path / "o" / "img1.png").is_file()
    assert Image.open(tmp_path / "o" / "img1.png").size == (30, 38)

    dst = tmp_path / "up.png"
    assert main(["sr", "upscale", str(run), str(image_folders / "test" / "img0.png"), "--out", str(dst)]) == 0
    assert Image.open(dst).size == (2 * 42, 2 * 34)  # the whole image, not modcropped
    assert main(["sr", "upscale", str(run), str(image_folders / "test" / "img0.png"), "--out", str(dst)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_sr_compare_end_to_end_and_resume(image_folders, tmp_path, capsys):
    out = tmp_path / "cmp"
    data = ["--data-dir", str(image_folders / "train"), "--eval-dir", str(image_folders / "test")]
    argv = ["sr", "compare", *TINY, *data, "--attentions", "softmax,mirror", "--seeds", "0,1", "--out", str(out)]
    argv += ["--latency-rounds", "1", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["softmax", "mirror"]
    for m in results["methods"].values():
        assert set(m["runs"]) == {"0", "1"} and m["psnr_std"] is not None and m["latency_s"] > 0
        assert m["params"] > 0 and m["macs"] > 0
    assert results["bicubic"]["psnr"] > 0
    for name in ("results.md", "crops.png", "psnr_vs_latency.png"):
        assert (out / name).is_file()
    assert "| bicubic |" in (out / "results.md").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0  # every run reused
    assert "reusing 4 of 4 runs" in capsys.readouterr().out


def test_sr_errors_are_one_line(tmp_path, capsys):
    assert main(["sr", "train", "--dataset", "folder", "--data-dir", str(tmp_path / "missing"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    assert main(["sr", "train", "--dataset", "folder", "--data-dir", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.png" in err
    assert main(["sr", "train", "--model", "vit"]) == 2
    assert "sr_tiny, sr_small or sr_light" in capsys.readouterr().err
    assert main(["sr", "eval", str(tmp_path / "nothing")]) == 2


def test_task_metrics_match_the_metric_functions():
    from mirrorla.metrics import psnr_y, ssim_y
    from mirrorla.tasks import create_task

    task = create_task("super_resolution", SR_BASE.replace(scale=3))
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 33, 33)
    sr = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    sums = task.eval_sums(sr, hr)
    assert sums["psnr"] == pytest.approx(psnr_y(sr, hr, border=3).sum().item())
    assert sums["ssim"] == pytest.approx(ssim_y(sr, hr, border=3).sum().item())
