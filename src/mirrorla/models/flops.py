"""Parameter and multiply–accumulate counts that include the attention matmuls.

Counting method: ``torch.utils.flop_counter.FlopCounterMode`` on a real forward pass (batch 1, CPU,
``no_grad``) with every softmax attention switched to its *unfused* path for the count (the fused CPU
SDPA kernel is invisible to the counter, pytorch/pytorch#195460). Counted ops: matmuls (``mm``,
``addmm``, ``bmm``, ``baddbmm``) and convolutions. Not counted: elementwise work (softmax, feature
maps, norms, activations, the normaliser's division), as in fvcore/mmcv. FlopCounterMode reports
FLOPs = 2 × MACs; everything here is MACs.

``attn_macs`` is the part done in batched matmuls (``bmm``/``baddbmm``): the attention cores
(QKᵀ and AV for softmax; φKᵀV and φQ·S for linear attention). Linear layers run as ``mm``/``addmm``
and convolutions separately. :func:`analytic_attention_macs` gives the per-layer formula used to
cross-check it (docs/methods.md §9.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ModelCost",
    "count_params",
    "count_macs",
    "count_run_macs",
    "unfused_attention",
    "MAC_COUNTER",
    "analytic_attention_macs",
    "model_cost",
    "cost_table",
]

_BATCHED = ("bmm", "baddbmm")

#: How every MAC number of the library is counted (results files record it).
MAC_COUNTER = "torch.utils.flop_counter.FlopCounterMode (matmul/conv only, unfused softmax), FLOPs/2"


@dataclass(frozen=True)
class ModelCost:
    """Parameters and MACs of one model at one input size."""

    name: str
    params: int
    macs: int
    attn_macs: int
    input_size: tuple[int, int, int]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch mirrorla (``fused``) and timm (``fused_attn``) softmax layers to the explicit matrix path."""
    saved = []
    for module in model.modules():
        for attr in ("fused", "fused_attn"):
            if isinstance(getattr(module, attr, None), bool):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, False)
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


def count_run_macs(run: Callable[[], object], *, fake: bool = False) -> tuple[int, int]:
    """(total MACs, batched-matmul MACs) of ``run()``: the library's one MAC counter.

    ``fake=True`` runs under ``FakeTensorMode``: tensors ``run`` creates have shapes but no memory,
    so even an N = 65,536 softmax layer is counted without its N×N matrix. ``run`` must switch fused
    softmax paths off itself (:func:`unfused_attention`), since the fused kernel is invisible to the
    counter.
    """
    counter = FlopCounterMode(display=False)
    mode = nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.no_grad(), counter:
        run()
    per_op = counter.get_flop_counts().get("Global", {})
    batched = sum(v for op, v in per_op.items() if str(op).split(".")[1] in _BATCHED)
    return int(counter.get_total_flops() // 2), int(batched // 2)


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> tuple[int, int]:
    """(total MACs, batched-matmul MACs) of one forward of a (1, *input_size) input, unfused path."""
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with unfused_attention(model):
            return count_run_macs(lambda: model(x))
    finally:
        model.train(was_training)


def analytic_attention_macs(
    kind: str, num_tokens: int, num_heads: int, head_dim: int, num_keys: int | None = None
) -> int:
    """MACs of one attention core (no projections) per image, the cross-check formula of docs/methods.md §9.1.

    ``softmax``: QKᵀ and AV, 2·N·M·d per head. ``linear``: φKᵀV (M·d·d) and φQ·S (N·d·d) per head;
    the normaliser adds N·d + M·d when computed as matmuls, which this formula leaves out.
    """
    keys = num_tokens if num_keys is None else num_keys
    if kind == "softmax":
        return 2 * num_tokens * keys * head_dim * num_heads
    if kind == "linear":
        return (num_tokens + keys) * head_dim * head_dim * num_heads
    raise ValueError(f"kind must be 'softmax' or 'linear', got {kind!r}")


def model_cost(name: str, img_size: int = 224, **kwargs) -> ModelCost:
    """Build the timm model ``name`` (random weights) and count its parameters and MACs at img_size²."""
    import timm

    import mirrorla.models  # noqa: F401  (registers the names)

    model = timm.create_model(name, **kwargs)
    macs, attn = count_macs(model, (3, img_size, img_size))
    return ModelCost(name, count_params(model), macs, attn, (3, img_size, img_size))


def cost_table(costs: Sequence[ModelCost]) -> str:
    """A Markdown table: model, params (M), GMACs, attention-matmul GMACs."""
    lines = [
        "| model | params (M) | GMACs | attention matmul GMACs |",
        "|---|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(f"| `{c.name}` | {c.params / 1e6:.2f} | {c.macs / 1e9:.3f} | {c.attn_macs / 1e9:.3f} |")
    return "\n".join(lines)
