"""Build the classifier a run trains, and measure it: parameters, MACs, inference throughput.

``model="vit"`` is the project's small ViT: timm's ``VisionTransformer`` (cls token, patch embedding,
pre-norm blocks) with every block's attention taken from the mirrorla registry through timm's
``attn_layer=`` hook. Any other name goes to ``timm.create_model``.
"""

from __future__ import annotations

import time
from typing import Any

import timm
import torch
from torch import nn

from mirrorla.engine.config import TrainConfig
from mirrorla.registry import attention_layer, list_attentions

__all__ = [
    "create_classifier",
    "check_attentions",
    "count_params",
    "count_macs",
    "measure_throughput",
    "measure_throughput_rounds",
]


def check_attentions(names: list[str]) -> None:
    """Raise ``ValueError`` naming the unknown ones and listing every valid name."""
    valid = list_attentions()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown attention(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}")


def create_classifier(cfg: TrainConfig, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """The model of ``cfg`` for images (B, in_chans, image_size, image_size) → logits (B, num_classes)."""
    if cfg.attention is not None:
        check_attentions([cfg.attention])
    if cfg.model == "vit":
        if image_size % cfg.patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {cfg.patch_size}")
        vit_args: dict[str, Any] = dict(
            img_size=image_size,
            patch_size=cfg.patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path,
        )
        if cfg.attention is None:
            return timm.models.VisionTransformer(**vit_args)
        # The library's ViT: it tells each attention the patch grid and lists the attention layers'
        # no-weight-decay parameters (the same class as the registered deit_* models).
        from mirrorla.models.vit import LinearVisionTransformer

        return LinearVisionTransformer(
            attention=cfg.attention, attn_kwargs=dict(cfg.attention_kwargs), dynamic_img_size=False, **vit_args
        )
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_path_rate=cfg.drop_path)
    if cfg.attention is not None:
        # Only models with an ``attn_layer`` hook (timm's ViT family) can take a registry attention.
        kwargs["attn_layer"] = attention_layer(cfg.attention, num_prefix_tokens=1, **cfg.attention_kwargs)
    try:
        return timm.create_model(cfg.model, img_size=image_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise ValueError(
                f"timm model {cfg.model!r} cannot be built with attention={cfg.attention!r} ({err}); "
                "use --attention none to keep its own attention"
            ) from err
        return timm.create_model(cfg.model, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _set_unfused(model: nn.Module, unfused: bool) -> dict[tuple[nn.Module, str], bool]:
    old = {}
    for m in model.modules():
        for attr in ("fused", "fused_attn"):
            if isinstance(getattr(m, attr, None), bool):
                old[(m, attr)] = getattr(m, attr)
                setattr(m, attr, not unfused and old[(m, attr)])
    return old


def count_macs(model: nn.Module, in_chans: int, image_size: int) -> tuple[int, str]:
    """Multiply-accumulates of one forward pass on one image, and the name of the counter used.

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC for matmuls and convolutions but
    cannot see the fused CPU SDPA kernel (ECOSYSTEM.md), so softmax layers are switched to their
    explicit path (``fused = False``) while counting. Element-wise work (feature maps, norms,
    reflections) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    old = _set_unfused(model, True)
    try:
        x = torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        flops = counter.get_total_flops()
    finally:
        for (m, attr), value in old.items():
            setattr(m, attr, value)
        model.train(was_training)
    return int(flops // 2), "torch.utils.flop_counter.FlopCounterMode (matmul/conv only, unfused softmax), FLOPs/2"


@torch.no_grad()
def measure_throughput(
    model: nn.Module, in_chans: int, image_size: int, batch_size: int = 128, warmup: int = 5, iters: int = 10
) -> float:
    """Inference images/s: eval mode, one batch, ``warmup`` forwards, then ``iters`` timed forwards.

    The protocol of METHODS.md §9.1 (Swin's ``main.py``: 50 warm-up, 30 timed); the counts are
    arguments so CPU runs can use fewer.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
    for _ in range(warmup):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    return batch_size * iters / elapsed


def measure_throughput_rounds(
    models: dict[str, nn.Module],
    in_chans: int,
    image_size: int,
    batch_size: int = 128,
    warmup: int = 5,
    iters: int = 10,
    rounds: int = 5,
) -> dict[str, list[float]]:
    """Inference images/s of several models, ``rounds`` times each, the models taking turns.

    Each round times every model once with :func:`measure_throughput` (``warmup`` forwards before the
    first round, one before later rounds). Taking turns means a change of load on a shared machine hits
    all models alike instead of whichever model happened to be measured at that moment; report the
    median over rounds. Returns {name: [img/s of round 1, …]}.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        for name, model in models.items():
            n_warm = warmup if r == 0 else 1
            out[name].append(measure_throughput(model, in_chans, image_size, batch_size, n_warm, iters))
    return out
