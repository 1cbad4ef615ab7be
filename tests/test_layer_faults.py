"""Faults of the attention layers found in review: fp16 range, empty inputs, bad options, the RoPE table.

* NaLaFormer in pure fp16: the value path's output (numerator / denominator) can exceed the fp16
  range before the LayerNorm brings it back to O(1); it must stay fp32 until after the norm.
* PolaFormer in pure fp16: the exponent p = 1 + α·sigmoid(w) was evaluated in fp16, so its backward
  multiplied a finite gradient by α = 4 in fp16 and overflowed.
* Pure-fp16 training in general: measured parameter gradients that no fp16 tensor can hold, and the
  engine's ``--amp fp16`` path (autocast, fp32 parameters, GradScaler) that handles them.
* Empty batches and empty sequences, ``eps <= 0`` and a ``hw`` that does not fit N, over the registry.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import rel_err
from peers_reference import rope_phases

import mirrorla
from mirrorla import create_attention, list_attentions
from mirrorla.layers.nala import AxialRoPE
from mirrorla.ops import causal_linear_attention, linear_attention, modulated_angle, recurrent_step
from mirrorla.ops.naive import naive_linear_attention

NAMES = list_attentions()
DIM, HEADS = 64, 2
FP16_MAX = torch.finfo(torch.float16).max


def build(name, **kw):
    torch.manual_seed(0)
    return create_attention(name, DIM, num_heads=HEADS, **kw)


# -- NaLaFormer: fp16 range of the value path and the official RoPE table -------------------------------
def _value_path_peak(layer, x, hw):
    """max |merge(O)| before the LayerNorm, from an fp32 run."""
    seen = {}
    mix = layer.mix

    def spy(*args, **kwargs):
        out = mix(*args, **kwargs)
        seen["peak"] = out.abs().max().item()
        return out

    layer.mix = spy
    try:
        with torch.no_grad():
            layer(x, hw=hw)
    finally:
        del layer.mix
    return seen["peak"]


def _nala_overflow_cases(name, count=2, hw=(14, 14)):
    """Seeded (layer, x) with one token ×100 whose value-path output exceeds 1.5× the fp16 maximum.

    RoPE rotates the numerator but not the denominator, so the output is a ratio that is not bounded
    by the values; how far it exceeds them depends on near-cancellations in the denominator, so the
    cases are searched for (deterministically) rather than pinned to one seed.
    """
    cases = []
    for seed in range(40):
        torch.manual_seed(seed)
        layer = create_attention(name, DIM, num_heads=HEADS)
        x = torch.randn(2, hw[0] * hw[1], DIM)
        x[:, 5] *= 100
        if _value_path_peak(layer, x, hw) > 1.5 * FP16_MAX:
            cases.append((layer, x))
            if len(cases) == count:
                break
    assert cases, "no seed put the value path above the fp16 range: the test would be vacuous"
    return cases, hw


@pytest.mark.parametrize("name", ["nala", "nala_cos"])
def test_nala_pure_fp16_keeps_the_value_path_in_fp32(name):
    cases, hw = _nala_overflow_cases(name)
    for layer, x in cases:
        with torch.no_grad():
            ref = layer(x, hw=hw)
            y = layer.half()(x.half(), hw=hw)
        assert y.dtype == torch.float16
        assert torch.isfinite(y).all()
        # fp16 projections of ×100 inputs against the fp32 layer (observed ≤ 1e-2: the output is a
        # near-cancelling ratio whose fp16 inputs move it).
        assert rel_err(y, ref) < 5e-2


@pytest.mark.parametrize("name", ["nala", "nala_cos"])
def test_nala_fp16_autocast_keeps_the_value_path_in_fp32(name):
    cases, hw = _nala_overflow_cases(name, count=1)
    layer, x = cases[0]
    with torch.no_grad():
        ref = layer(x, hw=hw)
        with torch.autocast("cpu", dtype=torch.float16):
            y = layer(x, hw=hw)
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) < 5e-2


@pytest.mark.parametrize("head_dim", [4, 8, 16, 32, 48, 64, 128])
def test_rope_table_is_the_official_float32_table(head_dim):
    # NaLaFormer NALA.py, RoPE.__init__: angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4))
    # in the default float32. Computing it in float64 and rounding differs in the last bit for most d.
    official = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4))
    assert official.dtype == torch.float32
    assert torch.equal(AxialRoPE(head_dim).freqs, official)


@pytest.mark.parametrize("head_dim", [8, 32, 64])
def test_rope_angles_equal_the_reference_exactly_in_float64(head_dim):
    hw, prefix = (5, 7), 1
    rope = AxialRoPE(head_dim).double()
    assert torch.equal(rope.angles(hw, prefix), rope_phases(hw, head_dim, prefix))


# -- pure fp16 gradients and the engine's fp16 recipe -----------------------------------------------------
def _grads(layer, x, hw):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    layer(x, hw=hw).float().sum().backward()
    return {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize(
    "name, scale, checked",
    [
        # The true gradient of PolaFormer's w (feature_map.power) is ≈ 2.8e4, inside the fp16 range,
        # but an fp16 evaluation of p = 1 + 4·sigmoid(w) multiplied it by 4 first (1.1e5 → inf).
        ("pola", 100, ("feature_map.power", "feature_map.scale")),
        # MirrorLA's fold of H_c into the fp16 qkv weight: its backward overflowed in fp16 (u_c's
        # gradient is ≈ 1.3e3, qkv.weight's ≈ 5.7e4) at ×400 inputs.
        ("mirror", 400, ("feature_map.u_c", "qkv.weight")),
    ],
)
def test_pure_fp16_parameter_gradients_stay_finite_where_they_fit(name, scale, checked):
    # N = 4096, loss = sum of the outputs, a .half() layer against the same layer in fp32.
    torch.manual_seed(0)
    layer = create_attention(name, DIM, num_heads=HEADS)
    x, hw = scale * torch.randn(1, 4096, DIM), (64, 64)
    g32 = _grads(layer, x, hw)
    g16 = _grads(layer.half(), x.half(), hw)
    for p in checked:
        assert g32[p].abs().max() < FP16_MAX, p  # the exact gradient fits in fp16
        assert torch.isfinite(g16[p]).all(), p
        assert rel_err(g16[p], g32[p]) < 5e-2, p  # fp16 forward of ×100-×400 inputs; observed ≤ 4e-3


def test_pure_fp16_gradient_overflow_is_intrinsic_and_autocast_with_grad_scaler_recovers_it():
    # docs/peers.md "Precision": in a .half() layer some parameter gradients exceed the fp16 range in
    # exact arithmetic (here qkv.weight of window_softmax at N = 4096, ×100 inputs, loss = sum), so no
    # layer change can make them finite. Autocast keeps fp32 parameters; the GradScaler sees the
    # overflow of the fp16 weight-gradient matmul, skips the step and backs the scale off until the
    # gradients fit; unscaled, they equal the fp32 ones.
    torch.manual_seed(0)
    layer = create_attention("window_softmax", DIM, num_heads=HEADS)
    x, hw = 100 * torch.randn(1, 4096, DIM), (64, 64)
    g32 = _grads(layer, x, hw)
    assert g32["qkv.weight"].abs().max() > FP16_MAX  # intrinsic: the exact value does not fit

    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)  # lr 0: only the scaler's bookkeeping runs
    overflowed = 0
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = layer(x, hw=hw).float().sum()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        finite = all(torch.isfinite(p.grad).all() for p in layer.parameters())
        scaler.step(optimizer)
        scaler.update()
        if finite:
            break
        overflowed += 1
    assert overflowed >= 1, "the first backward (scale 1) should overflow in fp16"
    assert finite and scaler.get_scale() < 1
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    # Observed 8.5e-2: the fp16 forward rounds logits of ×100 inputs; the overflow itself is gone.
    assert rel_err(layer.qkv.weight.grad, g32["qkv.weight"]) < 0.15


def test_engine_amp_fp16_uses_autocast_fp32_parameters_and_a_grad_scaler(monkeypatch):
    from mirrorla.data import InMemoryImages
    from mirrorla.data.datasets import DatasetInfo
    from mirrorla.engine import TrainConfig, train
    from mirrorla.tasks import ClassificationTask

    scalers = []

    class SpyScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled = self.stepped = 0
            scalers.append(self)

        def scale(self, outputs):
            self.scaled += 1
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            self.stepped += 1
            return super().step(optimizer, *args, **kwargs)

    seen = []
    create = ClassificationTask.build_model

    def create_and_watch(*args, **kwargs):
        model = create(*args, **kwargs)

        def hook(module, inputs):
            if module.training:
                seen.append(
                    (
                        torch.is_autocast_enabled("cpu"),
                        torch.get_autocast_dtype("cpu"),
                        {p.dtype for p in module.parameters()},
                    )
                )

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    monkeypatch.setattr(ClassificationTask, "build_model", create_and_watch)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(24) % 4
    common = dict(mean=(0.5,), std=(0.3,), image_size=28)
    data = (
        InMemoryImages(images[:16], labels[:16], augment=False, **common),
        InMemoryImages(images[16:], labels[16:], augment=False, **common),
        DatasetInfo("synthetic", 4, 1, 28, (0.5,), (0.3,), 16, 8),
    )
    cfg = TrainConfig(
        attention="pola",
        epochs=1,
        batch_size=8,
        amp="fp16",
        embed_dim=32,
        depth=1,
        num_heads=2,
        patch_size=7,
        mlp_ratio=2.0,
        progress=False,
        threads=None,
    )
    out = train(cfg, data)
    assert len(scalers) == 1 and scalers[0].is_enabled()
    assert scalers[0].scaled == scalers[0].stepped == 2  # 16 images / batch 8
    assert seen and all(on and dt == torch.float16 and dts == {torch.float32} for on, dt, dts in seen)
    assert all(p.dtype == torch.float32 for p in out["model"].parameters())


# -- empty inputs ---------------------------------------------------------------------------------------
def _accepts_any_token_count(name) -> bool:
    """True for attentions that need no token grid: they run N = 7 (not a square) without ``hw``."""
    try:
        build(name)(torch.randn(1, 7, DIM))
    except ValueError:
        return False
    return True


def _check_empty(layer, shape, hw):
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x, hw=hw)
    assert y.shape == shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == shape
    for n, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() == 0, n


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_an_empty_output_with_gradients(name):
    _check_empty(build(name), (0, 16, DIM), (4, 4))
    _check_empty(build(name), (0, 16, DIM), None)


@pytest.mark.parametrize("name", NAMES)
def test_empty_sequence(name):
    layer = build(name)
    if _accepts_any_token_count(name):
        _check_empty(layer, (2, 0, DIM), None)
        _check_empty(build(name), (2, 0, DIM), (0, 0))
    else:
        for hw in (None, (0, 0), (0, 5)):
            with pytest.raises(ValueError, match="token grid.*N=0"):
                layer(torch.randn(2, 0, DIM), hw=hw)


def test_empty_inputs_to_the_ops():
    q, k, v = torch.rand(2, 2, 0, 8), torch.rand(2, 2, 0, 8), torch.randn(2, 2, 0, 4)
    for kw in (dict(), dict(normalizer="sum"), dict(causal=True)):
        assert linear_attention(q, k, v, **kw).shape == (2, 2, 0, 4)
    assert causal_linear_attention(q, k, v, mode="recurrent").shape == (2, 2, 0, 4)
    # No keys: the mean form divides by max(M, 1), so the state stays 0 instead of 0/0.
    out = linear_attention(torch.rand(2, 2, 3, 8), k, v)
    assert out.shape == (2, 2, 3, 4) and out.abs().max() == 0


# -- eps -------------------------------------------------------------------------------------------------
def _takes_eps(name) -> bool:
    try:
        build(name, eps=1e-3)
    except TypeError:
        return False
    return True


BAD_EPS = [0.0, -1e-6, math.nan, math.inf]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eps", BAD_EPS)
def test_layers_reject_eps_that_is_not_positive(name, eps):
    if not _takes_eps(name):
        pytest.skip(f"{name} takes no eps option")
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0.*got"):
        build(name, eps=eps)


def test_positive_eps_keeps_all_negative_inputs_finite():
    # Why eps > 0: an all-negative q/k has ReLU features 0 everywhere, so O = 0 / (0 + eps).
    q = k = torch.relu(-torch.rand(1, 2, 5, 8))
    out = linear_attention(q, k, torch.randn(1, 2, 5, 8))
    assert torch.isfinite(out).all() and out.abs().max() == 0
    layer = build("linear_relu")
    with torch.no_grad():  # every projected q and k entry negative
        layer.qkv.weight.zero_()
        layer.qkv.bias.fill_(-1.0)
    assert torch.isfinite(layer(torch.randn(1, 5, DIM))).all()


@pytest.mark.parametrize("eps", BAD_EPS)
def test_ops_reject_eps_that_is_not_positive(eps):
    q, k, v = torch.rand(1, 2, 4, 8), torch.rand(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    msg = r"eps must be a finite number > 0.*got"
    with pytest.raises(ValueError, match=msg):
        linear_attention(q, k, v, eps=eps)
    with pytest.raises(ValueError, match=msg):
        linear_attention(q, k, v, eps=eps, causal=True)
    with pytest.raises(ValueError, match=msg):
        causal_linear_attention(q, k, v, eps=eps)
    with pytest.raises(ValueError, match=msg):
        recurrent_step(None, q[:, :, 0], k[:, :, 0], v[:, :, 0], eps=eps)
    with pytest.raises(ValueError, match=msg):
        modulated_angle(torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(1, 2, 4), eps=eps)
    with pytest.raises(ValueError, match=msg):
        naive_linear_attention(q, k, v, eps=eps)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_min_denominator_must_be_positive(value):
    q, k, v = torch.rand(1, 2, 4, 8), torch.rand(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="min_denominator must be a finite number > 0"):
        linear_attention(q, k, v, min_denominator=value)
    with pytest.raises(ValueError, match="min_denominator must be a finite number > 0"):
        build("linear_relu", min_denominator=value)


@pytest.mark.parametrize("name, option", [("mirror", "variance_eps"), ("nala", "norm_eps"), ("nala_cos", "norm_eps")])
@pytest.mark.parametrize("eps", BAD_EPS)
def test_feature_map_eps_options_must_be_positive(name, option, eps):
    with pytest.raises(ValueError, match=f"{option} must be a finite number > 0"):
        build(name, **{option: eps})


# -- hw must fit N, in every attention ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_a_given_hw_is_checked_against_n(name):
    layer = build(name)
    x = torch.randn(1, 16, DIM)
    assert layer(x, hw=(4, 4)).shape == x.shape
    assert layer(x, hw=(2, 8)).shape == x.shape
    for hw in [(3, 3), (4, 5), (-4, -4), (16,), (4, 4, 1), (4.0, 4.0)]:
        with pytest.raises(ValueError, match=r"hw="):
            layer(x, hw=hw)


@pytest.mark.parametrize("name", NAMES)
def test_hw_counts_the_spatial_tokens_only(name):
    if not getattr(mirrorla.registry.get_attention_entry(name).cls, "supports_prefix_tokens", True):
        pytest.skip(f"{name} takes no prefix tokens")
    layer = build(name, num_prefix_tokens=1)
    x = torch.randn(1, 17, DIM)
    assert layer(x, hw=(4, 4)).shape == x.shape
    with pytest.raises(ValueError, match=r"hw=\(17, 1\).*1 prefix"):
        layer(x, hw=(17, 1))
