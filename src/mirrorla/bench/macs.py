"""Multiply-accumulates of a forward pass, counted on fake tensors (no memory, no compute).

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC for matmuls and convolutions
and misses the fused CPU attention kernel (ECOSYSTEM.md), so fused softmax paths are switched to
their explicit form while counting. Inputs are created under ``FakeTensorMode``, so even an
N = 65,536 softmax layer is counted without allocating its N×N matrix. Elementwise work
(activations, reflections, normalisation) is not counted: the numbers are matmul/conv MACs, as
fvcore reports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "unfused"]


@contextlib.contextmanager
def unfused(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch mirrorla (``fused``) and timm (``fused_attn``) softmax to the explicit matrix."""
    saved = []
    for m in module.modules():
        for attr in ("fused", "fused_attn"):
            if isinstance(getattr(m, attr, None), bool):
                saved.append((m, attr, getattr(m, attr)))
                setattr(m, attr, False)
    try:
        yield module
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def count_macs(run: Callable[[], object]) -> int:
    """MACs of ``run()`` = counted FLOPs / 2. Tensors ``run`` creates are fake (shapes only)."""
    counter = FlopCounterMode(display=False)
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad(), counter:
        run()
    return int(counter.get_total_flops() // 2)
