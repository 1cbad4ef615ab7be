"""What ``mirrorla analyze`` measures: a trained run's model or a named model, and the inputs to feed it.

Sources: a run folder, its ``checkpoints/`` folder or a checkpoint file of ``train``/``compare``
(classification), ``sr train``/``sr compare`` (super-resolution) or ``lra train``/``lra compare``
(long-range); or a model name (``vit``, a mirrorla model, any timm model) with an attention and
optional weights. Inputs: the run's own evaluation images (classification, long-range), the test
photos (super-resolution), or image files given by the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.engine.weights import describe_settings, load_checked_weights

__all__ = ["AnalysisSource", "from_run", "from_model_name", "image_files", "load_images"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class AnalysisSource:
    """A model in eval mode, its input batches, one line that describes both, and the first input as
    an image for the figures ((C, H, W), any range) or None (token sequences)."""

    model: nn.Module
    batches: list[Any]
    header: str
    display: Tensor | None
    forward: Any = None


def image_files(path: str | os.PathLike) -> list[Path]:
    """The image files at ``path``: the file itself or the images in the folder (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file())
        if files:
            return files
        raise ValueError(f"{p} holds no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    raise FileNotFoundError(f"no image file or folder at {p}; check --images")


def load_images(
    files: list[Path], in_chans: int, size: int | tuple[int, int] | None, mean, std, limit: int
) -> list[Tensor]:
    """Up to ``limit`` images as float (1, C, H, W) normalised with mean/std; resized to ``size`` when given
    (bilinear), gray averaged from RGB when ``in_chans`` is 1."""
    from mirrorla.data.sr import load_image

    out = []
    for f in files[:limit]:
        x = load_image(f).float().div(255.0)[None]  # (1, 3, H, W)
        if in_chans == 1:
            x = x.mean(1, keepdim=True)
        elif in_chans != 3:
            raise ValueError(f"images can be fed to models with 1 or 3 input channels, this one has {in_chans}")
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            if tuple(x.shape[-2:]) != hw:
                x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        out.append((x - m) / s)
    return out


def _chunks(x: Tensor, batch: int) -> list[Tensor]:
    return [x[i : i + batch] for i in range(0, x.shape[0], batch)]


def from_run(
    path: str | os.PathLike, num_inputs: int, images: str | None, batch: int, ema: bool = False
) -> AnalysisSource:
    """The trained model of a run (any task) and its inputs."""
    from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint

    ckpt = load_checkpoint(path, weights_only=True)
    cfg = checkpoint_config(ckpt, path)
    weights = ckpt["ema"] if ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    kind = "EMA" if ema else "model"

    def load(model: nn.Module) -> nn.Module:
        return load_checked_weights(model, weights, ckpt["path"], describe_settings(cfg))

    what = f"{ckpt['path']} ({cfg.task}, model {cfg.model}, attention {cfg.attention}, {kind} weights)"
    if cfg.task == "classification":
        return _classification_run(cfg, load, what, num_inputs, images, batch)
    if cfg.task == "super_resolution":
        return _sr_run(cfg, load, what, num_inputs, images)
    if cfg.task == "long_range":
        if images is not None:
            raise ValueError("a long-range run reads token sequences, not --images; leave --images out")
        return _lra_run(cfg, load, what, num_inputs, batch)
    raise ValueError(f"analyze does not know task {cfg.task!r}")


def _classification_run(cfg, load, what: str, num_inputs: int, images: str | None, batch: int) -> AnalysisSource:
    from mirrorla.data import build_datasets
    from mirrorla.data.datasets import InMemoryImages
    from mirrorla.tasks.classification import create_classifier

    # The run's dataset gives channels, size and normalisation, also for --images (then 1 image is read).
    _, eval_set, info = build_datasets(
        cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, augment=False, train_subset=1,
        eval_subset=1 if images is not None else None, download=False,
    )  # fmt: skip
    if images is not None:
        xs = load_images(image_files(images), info.in_chans, info.image_size, info.mean, info.std, num_inputs)
        x = torch.cat(xs)
        source = f"{len(xs)} image(s) from {images}, resized to {info.image_size}"
    else:
        n = min(num_inputs, len(eval_set))
        if isinstance(eval_set, InMemoryImages):
            x = eval_set.prepare_batch(eval_set.get_batch(torch.arange(n))[0])
        else:
            x = torch.stack([eval_set[i][0] for i in range(n)])
        source = f"the first {n} evaluation images of {info.name}"
    model = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)
    load(model)
    return AnalysisSource(model.eval(), _chunks(x, batch), f"Model: {what}. Inputs: {source}.", x[0])


def _sr_run(cfg, load, what: str, num_inputs: int, images: str | None) -> AnalysisSource:
    from mirrorla.data.sr import load_image, load_pairs
    from mirrorla.tasks import create_task

    model = create_task(cfg.task, cfg).build_model(cfg, None)
    load(model)
    if images is not None:
        files = image_files(images)[:num_inputs]
        lrs = [load_image(f) for f in files]
        for f, lr in zip(files, lrs, strict=True):
            _check_sr_memory(model, lr, f)
        source = f"{len(lrs)} LR image(s) from {images}, whole"
    else:
        pairs = load_pairs("photos", "test", cfg.scale, cfg.degradation)[:num_inputs]
        lrs = [p.lr for p in pairs]
        source = f"the LR versions of {len(lrs)} test photo(s) (×{cfg.scale}, {cfg.degradation}), whole"
    batches = [lr.float().div(255.0)[None] for lr in lrs]  # one image per batch: sizes differ
    return AnalysisSource(model.eval(), batches, f"Model: {what}. Inputs: {source}.", batches[0][0])


def _check_sr_memory(model: nn.Module, lr: Tensor, path: Path) -> None:
    """Refuse an --images file whose whole-image analysis would not fit in memory: the forward (estimated as
    for ``sr upscale``) plus the captured q, k and features of one layer (about 6 (N, C) float tensors)."""
    from mirrorla.engine.sr import check_upscale_memory

    check_upscale_memory(
        model,
        lr,
        f"analysing {path}",
        extra_per_pixel=6 * 4 * model.embed_dim,
        fix="analyse a smaller crop of it (the analysis needs the whole image in one pass; `mirrorla sr upscale "
        "--tile` upscales large images)",
    )


def _lra_run(cfg, load, what: str, num_inputs: int, batch: int) -> AnalysisSource:
    from mirrorla.tasks import create_task

    task = create_task(cfg.task, cfg)
    _, eval_set, info = task.build_datasets(cfg)  # the model is sized by the data's facts (vocabulary, length)
    model = task.build_model(cfg, info)
    load(model)
    n = min(num_inputs, len(eval_set))
    x, _ = eval_set.get_batch(torch.arange(n))
    display = None
    if info.grid is not None:  # an image task: show the first sequence as its image
        display = x[0, : info.grid[0] * info.grid[1]].float().view(1, *info.grid)
    header = f"Model: {what}. Inputs: the first {n} evaluation sequences of {info.task}."
    return AnalysisSource(model.eval(), _chunks(x, batch), header, display)


def from_model_name(
    name: str,
    attention: str | None,
    attn_kwargs: dict[str, Any],
    weights: str | None,
    images: str | None,
    num_inputs: int,
    batch: int,
    image_size: int | None,
    in_chans: int,
) -> AnalysisSource:
    """A model built by :func:`mirrorla.create_model` (random weights unless ``weights``) and image inputs:
    ``images``, else Fashion-MNIST evaluation images resized to the model's input size."""
    from mirrorla.models import create_model

    kwargs: dict[str, Any] = {"in_chans": in_chans}
    if image_size is not None:
        kwargs["img_size"] = image_size
    model = create_model(name, attention=attention, attn_kwargs=attn_kwargs, **kwargs)
    described = f"{name} with attention {attention or 'its own'}"
    if weights is not None:
        _load_weights(model, weights)
        described += f", weights {weights}"
    else:
        described += ", random weights"
    size = image_size or _input_size(model)
    _check_input_size(model, size)
    # ImageNet statistics (timm's default); a one-channel model gets their gray mean.
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if in_chans == 3 else ((0.449,), (0.226,))
    if images is not None:
        files = image_files(images)
        source = f"{min(len(files), num_inputs)} image(s) from {images}"
    else:
        files = None
        source = "Fashion-MNIST evaluation images"
    if files is not None:
        xs = load_images(files, in_chans, size, mean, std, num_inputs)
        x = torch.cat(xs)
    else:
        x = _fashion_mnist_images(num_inputs, in_chans, size, mean, std)
        source = f"the first {x.shape[0]} Fashion-MNIST evaluation images, resized to {size}"
    return AnalysisSource(model.eval(), _chunks(x, batch), f"Model: {described}. Inputs: {source}.", x[0])


def _check_input_size(model: nn.Module, size: int) -> None:
    """A ViT-style model cuts its input into patches: the input side must hold at least one patch."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    patch = max(patch) if isinstance(patch, (tuple, list)) else int(patch)
    if size < patch:
        raise ValueError(
            f"--image-size {size} is smaller than the model's {patch}×{patch} patches; pass --image-size {patch} or "
            "more (a multiple of the patch size)"
        )


def _input_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    if size:
        return int(size[-1])
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None):
        return int(embed.img_size[0])
    raise ValueError("cannot tell the model's input size; pass --image-size")


def _load_weights(model: nn.Module, weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}; check --weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
    except Exception as err:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(
            f"cannot read weights from {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "give a .safetensors file or a torch state dict saved with torch.save"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    from mirrorla.engine.weights import weights_mismatch

    problem = weights_mismatch(model, state)
    if problem is None:
        model.load_state_dict(state)
        return
    run = _run_of_checkpoint(path)
    if run is not None:
        raise ValueError(
            f"--weights {path} is a checkpoint of a mirrorla {run} run, not weights for --model: analyse the run "
            f"itself with `mirrorla analyze {path}` (it knows its model)"
        )
    raise ValueError(
        f"{path} does not fit the model: {problem}; convert official weights with mirrorla.models.convert first"
    )


def _run_of_checkpoint(path: Path) -> str | None:
    """The task of the mirrorla run whose checkpoint ``path`` is (its state file or run config beside it),
    else None."""
    import json

    for settings in (path.parent.parent / "config.json", path.parent / "config.json"):
        if settings.is_file():
            try:
                return str(json.loads(settings.read_text()).get("task", "training"))
            except (ValueError, OSError, AttributeError):
                return "training"
    if path.with_name(path.name.removesuffix(".safetensors") + ".state.pt").is_file():
        return "training"
    return None


def _fashion_mnist_images(n: int, in_chans: int, size: int, mean, std) -> Tensor:
    from mirrorla.data import build_datasets

    _, eval_set, _ = build_datasets("fashion_mnist", image_size=28, augment=False, train_subset=1, download=False)
    x = eval_set.get_batch(torch.arange(min(n, len(eval_set))))[0].float().div(255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s
