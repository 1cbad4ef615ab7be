"""Super-resolution with a trained network: load a checkpoint, score whole images, upscale a file.

Dimension letters: C = 3 channels, h×w an LR image, s the scale.

Scoring follows the SR literature: the network's output is clamped and rounded to 8 bits, then PSNR and
SSIM are computed on the Y channel (BT.601) with ``scale`` pixels cropped at every border
(:mod:`mirrorla.metrics`). Whole images go through the network in one pass, without tiling: the point of
the comparison is global attention over every LR pixel. Bicubic, the floor every SR table reports, is
MATLAB-style bicubic upsampling (:func:`mirrorla.data.sr.imresize`).

Memory. Before an image goes through the network, :func:`check_upscale_memory` estimates the pass's peak
(:func:`mirrorla.memory.traced_peak_bytes`: the model's forward on fake tensors of the image's size,
so the attention's own cost is in it) and refuses, in one line, an image that would not fit, naming a
``--tile`` that does. :func:`upscale_tiled` is that way out, as in SwinIR's and BasicSR's test scripts:
overlapping tiles, each upscaled alone, blended. Its reference is :func:`upscale`: a tile that covers the
image gives exactly the whole-image output; smaller tiles give each attention less context (measured in
docs/super-resolution.md).
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint
from mirrorla.engine.config import TrainConfig

__all__ = [
    "load_trained_sr",
    "upscale",
    "upscale_tiled",
    "tile_starts",
    "default_overlap",
    "estimate_upscale_bytes",
    "check_upscale_memory",
    "check_pairs_memory",
    "bicubic_upscale",
    "evaluate_images",
    "upscale_file",
    "save_image",
    "image_scores",
    "mean_scores",
]


def load_trained_sr(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = False
) -> tuple[nn.Module, TrainConfig]:
    """The SR network of a ``mirrorla sr train``/``sr compare`` run (run folder, checkpoints/ or file), in eval mode."""
    from mirrorla.tasks import create_task

    ckpt = load_checkpoint(checkpoint, weights_only=True)
    cfg = checkpoint_config(ckpt, checkpoint)
    if cfg.task != "super_resolution":
        raise ValueError(f"{ckpt['path']} is a {cfg.task} run, not a super-resolution one (mirrorla sr train)")
    model = create_task(cfg.task, cfg).build_model(cfg, None)
    weights = ckpt["ema"] if ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    from mirrorla.engine.distributed import resolve_device
    from mirrorla.engine.weights import describe_settings, load_checked_weights

    load_checked_weights(model, weights, ckpt["path"], describe_settings(cfg))
    return model.to(resolve_device(device)).eval(), cfg


def _to_unit(img: Tensor) -> Tensor:
    return img.float().div(255.0)


def _to_uint8(img: Tensor) -> Tensor:
    return img.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward(model: nn.Module, lr: Tensor) -> Tensor:
    """uint8 (3, h, w) → float (3, s·h, s·w) on the model's device, unclamped."""
    return model(_to_unit(lr)[None].to(_model_device(model)))[0]


@torch.inference_mode()
def upscale(model: nn.Module, lr: Tensor) -> Tensor:
    """uint8 LR image (3, h, w) → uint8 SR image (3, s·h, s·w), one forward pass on the model's device."""
    return _to_uint8(_forward(model, lr)).cpu()


def default_overlap(tile: int) -> int:
    """The LR pixels two neighbouring tiles share unless told: SwinIR's 32, at most a quarter of the tile."""
    return min(32, tile // 4)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """First LR index of each tile along an axis of ``length`` pixels: a stride of ``tile − overlap``, the
    last tile flush with the end (so it may overlap its neighbour more), one tile when ``tile >= length``."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(length: int, ramp: int, rise: bool, fall: bool) -> Tensor:
    """Blending weights along one axis of a tile's output: rising over its first ``ramp`` pixels when a
    tile precedes it, falling over its last ``ramp`` when one follows, 1 elsewhere; never 0."""
    w = torch.ones(length)
    if ramp > 0:
        up = (torch.arange(min(ramp, length)) + 0.5) / ramp
        if rise:
            w[: len(up)] = torch.minimum(w[: len(up)], up)
        if fall:
            w[length - len(up) :] = torch.minimum(w[length - len(up) :], up.flip(0))
    return w


@torch.inference_mode()
def upscale_tiled(model: nn.Module, lr: Tensor, tile: int, overlap: int | None = None) -> Tensor:
    """uint8 LR image (3, h, w) → uint8 SR image (3, s·h, s·w) from overlapping ``tile``×``tile`` LR tiles.

    Each tile goes through the network alone (peak memory: one tile's forward, plus the float output image
    and its weights). Where tiles overlap, their outputs are blended with weights that ramp linearly over
    ``s·overlap`` output pixels (feathering instead of SwinIR's plain average, so no seam shows where a
    tile's context ends). A tile as large as the image gives exactly :func:`upscale`'s output. ``overlap``
    defaults to :func:`default_overlap`.
    """
    overlap = default_overlap(tile) if overlap is None else overlap
    _, h, w = lr.shape
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    device = _model_device(model)
    out: Tensor | None = None
    weight: Tensor | None = None
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            sr = _forward(model, lr[:, top : top + th, left : left + tw])
            s = sr.shape[-1] // tw
            if out is None:
                out = torch.zeros(3, s * h, s * w, device=device)
                weight = torch.zeros(1, s * h, s * w, device=device)
            wy = _ramp(s * th, s * overlap, i > 0, i < len(rows) - 1)
            wx = _ramp(s * tw, s * overlap, j > 0, j < len(cols) - 1)
            tile_weight = (wy[:, None] * wx[None, :]).to(device)
            region = (slice(None), slice(s * top, s * (top + th)), slice(s * left, s * (left + tw)))
            out[region] += sr * tile_weight
            weight[region] += tile_weight
    return _to_uint8(out / weight).cpu()


def estimate_upscale_bytes(model: nn.Module, hw: tuple[int, int], tile: int | None = None) -> int:
    """Peak bytes of :func:`upscale` (``tile=None``) or :func:`upscale_tiled` of an (h, w) LR image beyond the
    model's parameters. Whole: the traced forward with its conversion to uint8. Tiled: the float output and
    its weights (16·s²·h·w bytes) beside the larger of one tile's traced forward and the final conversion
    (two float temporaries and the uint8 image, 27·s²·h·w bytes)."""
    from mirrorla.memory import traced_peak_bytes

    h, w = hw
    if tile is None:
        return traced_peak_bytes(lambda: _to_uint8(_forward(model, torch.zeros(3, h, w, dtype=torch.uint8))))
    th, tw = min(tile, h), min(tile, w)
    forward = traced_peak_bytes(lambda: _forward(model, torch.zeros(3, th, tw, dtype=torch.uint8)))
    pixels = model.scale**2 * h * w
    return 16 * pixels + max(forward, 27 * pixels)


def _suggested_tile(model: nn.Module, hw: tuple[int, int], device: torch.device) -> int | None:
    from mirrorla.memory import ESTIMATE_FACTOR, ESTIMATE_FLOOR, available_memory_bytes

    available = available_memory_bytes(device)
    for tile in (512, 384, 256, 192, 128, 96, 64, 48, 32):
        if tile >= max(hw):
            continue
        needed = ESTIMATE_FACTOR * estimate_upscale_bytes(model, hw, tile) + ESTIMATE_FLOOR
        if available is None or needed <= available:
            return tile
    return None


def check_upscale_memory(
    model: nn.Module,
    lr: Tensor,
    name: str,
    tile: int | None = None,
    *,
    extra_per_pixel: int = 0,
    fix: str | None = None,
) -> None:
    """:class:`~mirrorla.memory.InsufficientMemoryError` when upscaling ``lr`` (``tile``: tiled) would not fit in
    the memory available, with a ``--tile`` that fits where one does. ``extra_per_pixel``: bytes per LR pixel a
    caller holds beside the pass (``analyze``'s captures); ``fix``: the advice instead of a ``--tile``."""
    from mirrorla.memory import ESTIMATE_FACTOR, ESTIMATE_FLOOR, available_memory_bytes, check_fits

    hw = (int(lr.shape[1]), int(lr.shape[2]))
    device = _model_device(model)
    available = available_memory_bytes(device)
    if available is None:
        return
    extra = extra_per_pixel * hw[0] * hw[1]
    if tile is None:
        # Every tensor of the forward grows at most as N² with the token count N (linear in N, or N² for an
        # explicit softmax matrix), so a probe at 32×32 clears most images without tracing them at full size.
        probe = (min(hw[0], 32), min(hw[1], 32))
        growth = (hw[0] * hw[1] / (probe[0] * probe[1])) ** 2
        bound = _probe_bytes(model, probe) * growth + extra
        if ESTIMATE_FACTOR * bound + ESTIMATE_FLOOR <= available:
            return
    what = f"{name} ({hw[0]}×{hw[1]} LR pixels{f', in {tile}×{tile} tiles' if tile else ', whole'})"
    if fix is None:
        suggested = _suggested_tile(model, hw, device)
        if suggested is not None and (tile is None or suggested < tile):
            fix = f"pass --tile {suggested} (tiled inference: less context per attention, see docs/super-resolution.md)"
        else:
            fix = "use a smaller image, a smaller --tile, or a machine with more memory"
    check_fits(estimate_upscale_bytes(model, hw, tile) + extra, device, what, fix)


#: model → {probe (h, w): traced bytes}; the probe of :func:`check_upscale_memory` is traced once per model.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe_bytes(model: nn.Module, hw: tuple[int, int]) -> int:
    cache = _PROBES.setdefault(model, {})
    if hw not in cache:
        cache[hw] = estimate_upscale_bytes(model, hw)
    return cache[hw]


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    """uint8 (3, h, w) → uint8 (3, s·h, s·w) by MATLAB-style bicubic: the floor of every SR table."""
    from mirrorla.data.sr import imresize

    return _to_uint8(imresize(_to_unit(lr), float(scale)))


def image_scores(sr: Tensor, hr: Tensor, scale: int) -> dict[str, float]:
    """PSNR and SSIM on Y (border ``scale``) of a uint8 (3, H, W) output against its HR image."""
    from mirrorla.metrics import psnr_y, ssim_y

    a, b = _to_unit(sr)[None], _to_unit(hr)[None]
    return {"psnr": psnr_y(a, b, border=scale).item(), "ssim": ssim_y(a, b, border=scale).item()}


def evaluate_images(
    model: nn.Module | None,
    pairs,
    scale: int,
    progress=None,
    save_dir: str | os.PathLike | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    check_memory: bool = True,
) -> list[dict[str, Any]]:
    """PSNR/SSIM (Y, border ``scale``) of each :class:`~mirrorla.data.sr.SRPair`, and the forward time.

    ``model=None`` scores bicubic upsampling. Returns one row per image: name, LR and HR size, psnr, ssim,
    seconds (one forward pass, the network only; None for bicubic). ``progress``: a tqdm bar to advance.
    ``save_dir``: also write each output there as ``<name>.png``. ``tile``: :func:`upscale_tiled` with that
    tile and ``overlap`` instead of one pass. ``check_memory``: first :func:`check_pairs_memory` (an image that
    would not fit is refused before any is scored).
    """
    if model is not None and check_memory:
        check_pairs_memory(model, pairs, tile)
    rows = []
    for pair in pairs:
        if model is None:
            sr, seconds = bicubic_upscale(pair.lr, scale), None
        else:
            t0 = time.perf_counter()
            sr = _upscale_or_explain(model, pair.lr, f"image {pair.name}", tile, overlap)
            seconds = time.perf_counter() - t0
        if tuple(sr.shape) != tuple(pair.hr.shape):
            raise ValueError(f"{pair.name}: the output is {tuple(sr.shape)}, its HR image {tuple(pair.hr.shape)}")
        if save_dir is not None:
            save_image(sr, Path(save_dir) / f"{pair.name}.png")
        lr_hw, hr_hw = list(pair.lr.shape[1:]), list(pair.hr.shape[1:])
        rows.append(
            {"image": pair.name, "lr_hw": lr_hw, "hr_hw": hr_hw, **image_scores(sr, pair.hr, scale), "seconds": seconds}
        )
        if progress is not None:
            progress.update(1)
    return rows


def check_pairs_memory(model: nn.Module, pairs, tile: int | None = None) -> None:
    """:func:`check_upscale_memory` of every :class:`~mirrorla.data.sr.SRPair`'s LR image."""
    for pair in pairs:
        check_upscale_memory(model, pair.lr, f"image {pair.name}", tile)


def _upscale_or_explain(model: nn.Module, lr: Tensor, name: str, tile: int | None, overlap: int | None) -> Tensor:
    """:func:`upscale` or :func:`upscale_tiled`; the allocator's out-of-memory error (the estimate missed, or
    another process took the memory) becomes one line with a ``--tile`` to try."""
    from mirrorla.memory import InsufficientMemoryError, is_allocation_error

    try:
        return upscale(model, lr) if tile is None else upscale_tiled(model, lr, tile, overlap)
    except (RuntimeError, MemoryError) as err:
        if not is_allocation_error(err):
            raise
        smaller = 256 if tile is None else max(16, tile // 2)
        raise InsufficientMemoryError(
            f"{name} ({lr.shape[1]}×{lr.shape[2]} LR pixels) ran out of memory ({str(err).splitlines()[0][:160]}); "
            f"pass --tile {smaller} (tiled inference, see docs/super-resolution.md)"
        ) from None


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean PSNR and SSIM over images (the way SR tables report a test set)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim")}


def save_image(img: Tensor, dst: str | os.PathLike, *, replace: bool = True) -> None:
    """Write a uint8 (3, H, W) image; the format comes from the extension. Encoded in memory and written
    with :func:`~mirrorla.engine.checkpoint.atomic_write_bytes`, so a crash or a full disk never leaves a
    half-written file under the user's name nor a temporary file; ``replace=False``: never replace an
    existing ``dst`` (``FileExistsError``), also not one another process writes at the same moment."""
    import io

    from PIL import Image

    from mirrorla.engine.checkpoint import atomic_write_bytes

    dst = Path(dst)
    image_format = Image.registered_extensions().get(dst.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot tell the image format of {dst}: give it an extension such as .png")
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format=image_format)
    atomic_write_bytes(dst, buf.getvalue(), replace=replace)


def upscale_file(
    model: nn.Module,
    scale: int,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    tile: int | None = None,
    overlap: int | None = None,
    *,
    replace: bool = True,
) -> dict[str, Any]:
    """Read image ``src``, upscale it (in one pass, or in ``tile``×``tile`` tiles), write ``dst`` (format from
    its extension, e.g. .png; an existing ``dst`` is replaced only with ``replace``, see :func:`save_image`).
    An image that would not fit in memory is refused before its pass."""
    from mirrorla.data.sr import load_image

    lr = load_image(src)
    check_upscale_memory(model, lr, str(src), tile)
    t0 = time.perf_counter()
    sr = _upscale_or_explain(model, lr, str(src), tile, overlap)
    seconds = time.perf_counter() - t0
    save_image(sr, dst, replace=replace)
    return {
        "input": str(src),
        "output": str(dst),
        "lr_hw": list(lr.shape[1:]),
        "sr_hw": list(sr.shape[1:]),
        "seconds": seconds,
    }
