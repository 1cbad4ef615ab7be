"""The fast default path equals the reference path (fp32, relative RMS error < 1e-5).

Fast paths: :func:`mirrorla.ops.reflections.mirror_features` and the folded projection (used by MirrorFeatureMap
when ``fast_path`` is on) against the reference composition ``reflect`` + ReLU, and
:func:`mirrorla.ops.focus.focused_features` (FocusedFeatureMap) against :func:`mirrorla.ops.focus.focus`.
The layer test runs over every registered attention that has a switchable fast path; the attentions without one
are listed with the reason (``NO_FAST_PATH``), and that list must be exactly the registered attentions whose
modules have no ``fast_path`` switch, so a new attention, or a new fast path, is noticed.
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from helpers import rel_err

from mirrorla import create_attention, list_attentions
from mirrorla.feature_maps import MirrorFeatureMap
from mirrorla.layers.linear import LinearAttention
from mirrorla.ops.naive import naive_linear_attention
from mirrorla.ops.reflections import mirror_features

TOL = 1e-5

#: Registered attentions with no ``fast_path`` switch, and why there is nothing to switch.
NO_FAST_PATH = {
    "linear_relu": "φ = ReLU is one element-wise op; the value path is the shared linear-attention op for all",
    "linear_elu": "φ = ELU + 1 is one element-wise op; same shared value path",
    "l2vit_lga": "L²ViT's linear global attention: φ = ReLU on the shared value path, nothing fused",
    "nala": "the norm-aware feature map is a composition of torch ops; no fused variant has been written",
    "nala_cos": "as nala (the paper's cosine-inhibit form)",
    "pola": "one path only: two_stream_linear_attention, tested against quadratic references in test_two_stream.py",
    "softmax": "PyTorch's scaled_dot_product_attention; no mirrorla op to switch",
    "window_softmax": "scaled_dot_product_attention per 7×7 window; no mirrorla op to switch",
    "mlla": "φ = ELU + 1 with RoPE on the numerator: torch ops on the shared RoPE-numerator value path, nothing fused",
    "rala": "the rank-augmented map is a composition of torch ops on the shared RoPE-numerator value path",
    "mala": "magnitude-aware scaling as torch ops on the shared RoPE-numerator value path; no fused variant",
    "agent": "agent tokens as two scaled_dot_product_attention-style softmax steps; no mirrorla op to switch",
}
#: Module class with a fast path → (module, attribute) of its reference, which only the reference path calls.
REFERENCE = {
    "MirrorFeatureMap": ("mirrorla.feature_maps.mirror", "MirrorFeatureMap.reference_features"),
    "FocusedFeatureMap": ("mirrorla.feature_maps.focused", "focus"),
}
WITH_FAST_PATH = [n for n in list_attentions() if n not in NO_FAST_PATH]


def _set_fast(module: torch.nn.Module, fast: bool) -> int:
    """Switch every ``fast_path`` in ``module``; the number of modules switched."""
    n = 0
    for m in module.modules():
        if hasattr(m, "fast_path"):
            m.fast_path, n = fast, n + 1
    return n


def _run(layer, x, hw, mask):
    x = x.clone().requires_grad_(True)
    y = layer(x, hw=hw, key_padding_mask=mask)
    g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads


def _count_reference_calls(monkeypatch, layer) -> list[int]:
    """Patch the reference of every fast-path module in ``layer`` to count its calls; the counter."""
    calls = [0]
    for cls in {type(m).__name__ for m in layer.modules() if hasattr(m, "fast_path")}:
        assert cls in REFERENCE, f"{cls} has a fast_path switch but no reference listed in REFERENCE"
        module_name, attribute = REFERENCE[cls]
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, name)

        def counted(*args, _real=real, **kwargs):
            calls[0] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return calls


def test_the_attentions_without_a_fast_path_are_exactly_those_listed():
    without = {n for n in list_attentions() if _set_fast(create_attention(n, 64, num_heads=4), True) == 0}
    assert without == set(NO_FAST_PATH)
    assert WITH_FAST_PATH, "no attention with a fast path: the layer test below would check nothing"


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("name", WITH_FAST_PATH)
def test_layer_fast_equals_reference(name, masked, monkeypatch):
    torch.manual_seed(0)
    layer = create_attention(name, 64, num_heads=4)
    hw, B = (7, 7), 2
    x = torch.randn(B, 49, 64) * 2
    mask = None
    if masked:
        mask = torch.ones(B, 49, dtype=torch.bool)
        mask[1, 40:] = False
    calls = _count_reference_calls(monkeypatch, layer)
    assert _set_fast(layer, True) > 0
    fast = _run(layer, x, hw, mask)
    assert calls[0] == 0, "the fast path called the reference"
    assert _set_fast(layer, False) > 0
    ref = _run(layer, x, hw, mask)
    assert calls[0] > 0, "switching fast_path off did not reach the reference"
    assert rel_err(fast[0], ref[0]) < TOL
    assert rel_err(fast[1], ref[1]) < TOL
    assert fast[2].keys() == ref[2].keys()
    for n in ref[2]:
        assert rel_err(fast[2][n], ref[2][n]) < TOL, n


SWITCHES = [
    dict(block_reflection=b, variance_modulation=v, cross_head=c)
    for b, v, c in itertools.product((True, False), repeat=3)
    if b or not v
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "".join("1" if v else "0" for v in s.values()))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("layout", ["qkv_view", "contiguous"])
def test_mirror_features_equal_reference(switches, masked, layout):
    torch.manual_seed(0)
    B, H, N, D = 2, 3, 37, 8
    fm = MirrorFeatureMap(H, D, **switches)
    with torch.no_grad():
        for p in fm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    base = (torch.randn(B, N, 3 * H * D) * 1.5 + 0.2).requires_grad_(True)
    if layout == "qkv_view":
        q, k, _ = base.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    else:
        q, k = base[..., : H * D].reshape(B, N, H, D).transpose(1, 2).contiguous(), base[..., H * D : 2 * H * D]
        k = k.reshape(B, N, H, D).transpose(1, 2).contiguous()
    mask = None
    if masked:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[0, 30:] = False
    outs = {}
    for fast in (True, False):
        fm.fast_path = fast
        pq, pk = fm(q, k, mask)
        assert (pq >= 0).all() and (pk >= 0).all()
        grads = torch.autograd.grad((pq * 1.3 + pk.square()).sum(), [base, *fm.parameters()])
        outs[fast] = (pq.detach(), pk.detach(), grads)
    for a, b in zip(outs[True][:2], outs[False][:2], strict=True):
        assert rel_err(a, b) < TOL
    for a, b in zip(outs[True][2], outs[False][2], strict=True):
        assert rel_err(a, b) < TOL


def test_mirror_features_odd_offset_input_and_detach():
    # A view at an odd storage offset cannot be viewed as complex pairs: the op copies it first.
    torch.manual_seed(0)
    fm = MirrorFeatureMap(2, 4, detach_variance=True)
    raw = torch.randn(1 * 2 * 9 * 4 + 1)
    q = raw[1:].view(1, 2, 9, 4)
    k = torch.randn(1, 2, 9, 4)
    fm.fast_path = True
    fast = fm(q, k)
    fm.fast_path = False
    ref = fm(q, k)
    assert rel_err(fast[0], ref[0]) < TOL and rel_err(fast[1], ref[1]) < TOL


def test_mirror_features_gradcheck_float64():
    torch.manual_seed(0)
    q = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(8, dtype=torch.float64, requires_grad=True)
    theta = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    alpha = torch.full((2, 2), 0.3, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: mirror_features(*a)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, u, theta, alpha))


@pytest.mark.parametrize("name", [n for n in list_attentions() if n != "softmax"])
def test_linear_core_equals_quadratic_oracle(name):
    """Each LinearAttention with the shared value path: attend() = the (N, M) oracle of docs/methods.md §1.1."""
    torch.manual_seed(0)
    layer = create_attention(name, 64, num_heads=4)
    if not isinstance(layer, LinearAttention) or type(layer).mix is not LinearAttention.mix:
        pytest.skip("not the shared linear-attention value path")
    if layer.min_denominator is not None or layer.normalizer != "mean":
        pytest.skip("oracle below covers the default mean normaliser")
    base = torch.randn(2, 49, 3 * 64)
    q, k, v = base.view(2, 49, 3, 4, 16).permute(2, 0, 3, 1, 4)
    out = layer.attend(q, k, v)
    phi_q, phi_k = layer.feature_map(q, k)
    ref = naive_linear_attention(phi_q, phi_k, v, eps=layer.eps)
    assert rel_err(out, ref) < TOL
