"""Figures of an SR comparison: side-by-side crops (HR, bicubic, each attention) and PSNR against latency.

The crop of each test image is chosen by a fixed rule, not by eye: among the HR windows of side
:data:`CROP` on a stride-``CROP/2`` grid, the one where bicubic upsampling has the largest mean squared
error (the region with the most detail to restore, where methods differ most).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mirrorla.engine.checkpoint import save_figure

__all__ = ["plot_crops", "plot_psnr_latency", "detail_crop", "CROP"]

#: HR side of the crops shown.
CROP = 96


def detail_crop(hr: torch.Tensor, bicubic: torch.Tensor, size: int = CROP) -> tuple[int, int, int]:
    """(top, left, side) of the window where ``bicubic`` differs most from ``hr`` (uint8 (3, H, W) each)."""
    side = min(size, hr.shape[1], hr.shape[2])
    err = (hr.float() - bicubic.float()).pow(2).mean(0)
    stride = max(1, side // 2)
    windows = torch.nn.functional.avg_pool2d(err[None, None], side, stride=stride)[0, 0]
    i = int(windows.argmax())
    return (i // windows.shape[1]) * stride, (i % windows.shape[1]) * stride, side


def plot_crops(path: str | os.PathLike, pairs, scale: int, outputs: dict[str, list[Any]]) -> None:
    """One row per test image: HR, bicubic and each method's output (a PNG path or uint8 tensor) on its
    :func:`detail_crop`, each titled with its PSNR-Y on the whole image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mirrorla.data.sr import load_image
    from mirrorla.engine.sr import bicubic_upscale, image_scores

    names = list(outputs)
    cols = 2 + len(names)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(1.6 * cols, 1.75 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        bic = bicubic_upscale(pair.lr, scale)
        top, left, side = detail_crop(pair.hr, bic)
        panels = [("HR", pair.hr, None), ("bicubic", bic, image_scores(bic, pair.hr, scale)["psnr"])]
        for name in names:
            img = outputs[name][row]
            img = load_image(img) if isinstance(img, (str, os.PathLike)) else img
            panels.append((name, img, image_scores(img, pair.hr, scale)["psnr"]))
        for col, (title, img, psnr) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img[:, top : top + side, left : left + side].permute(1, 2, 0).numpy(), interpolation="nearest")
            label = title if psnr is None else f"{title}\n{psnr:.2f} dB"
            ax.set_title(label if row == 0 else ("" if psnr is None else f"{psnr:.2f} dB"), fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(pair.name, fontsize=7)
    fig.suptitle(f"×{scale}: crops where bicubic errs most (PSNR-Y of the whole image)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=150)


def plot_psnr_latency(path: str | os.PathLike, results: dict[str, Any]) -> None:
    """Test-set PSNR (mean ± std over seeds) against whole-image latency, one point per attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in results["methods"].items():
        ax.errorbar(m["latency_s"], m["psnr_mean"], yerr=m["psnr_std"] or 0, fmt="o", capsize=3, label=name)
        ax.annotate(name, (m["latency_s"], m["psnr_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(results["bicubic"]["psnr"], color="grey", ls="--", lw=1, label="bicubic")
    ax.set_xscale("log")
    ax.set(
        xlabel="latency of one whole test image, s (log)",
        ylabel="test PSNR-Y, dB (mean ± std over seeds)",
        title="Super-resolution: quality against whole-image latency",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
