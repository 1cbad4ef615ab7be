"""Build the classifier a run trains, and measure it: parameters, MACs, inference throughput.

``model="vit"`` is the project's small ViT (:class:`mirrorla.models.LinearVisionTransformer`, timm's
``VisionTransformer`` with every block's attention taken from the mirrorla registry); any other name
is a mirrorla or timm model. All of them are built by :func:`mirrorla.models.create_model`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from mirrorla.models.flops import MAC_COUNTER, count_params
from mirrorla.models.flops import count_macs as _count_model_macs
from mirrorla.registry import get_attention_entry
from mirrorla.tasks.classification import create_classifier

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
    for name in names:
        get_attention_entry(name)


def count_macs(model: nn.Module, in_chans: int, image_size: int) -> tuple[int, str]:
    """Multiply-accumulates of one forward pass on one image, and the name of the counter used.

    The library's one counter (:func:`mirrorla.models.flops.count_macs`): matmuls and convolutions,
    softmax layers on their explicit path; element-wise work (feature maps, norms, reflections) is
    not counted.
    """
    macs, _ = _count_model_macs(model, (in_chans, image_size, image_size))
    return macs, MAC_COUNTER


@torch.no_grad()
def measure_throughput(
    model: nn.Module, in_chans: int, image_size: int, batch_size: int = 128, warmup: int = 5, iters: int = 10
) -> float:
    """Inference images/s: eval mode, one batch, ``warmup`` forwards, then ``iters`` timed forwards.

    The protocol of docs/methods.md §9.1 (Swin's ``main.py``: 50 warm-up, 30 timed); the counts are
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
