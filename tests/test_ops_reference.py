"""Every fast op against the naive reference beside it (``ops/<op>/naive.py``), output and gradients.

Complements tests/test_ops.py (linear attention forward, chunk/recurrent agreement, memory),
tests/test_mirror.py (reflection invariants) and tests/test_fast_path.py (the feature map's fast
path). Sizes are awkward on purpose (N = 49, 197: ragged last chunk, odd token counts); the
gradients are taken through a fixed random cotangent, and every test seeds its own generator.

Tolerances (relative RMS, :func:`helpers.rel_err`): fp32 inputs 1e-5 for outputs and 1e-4 for
gradients (the forms sum in different orders), fp64 inputs 1e-10.
"""

import itertools
import math

import pytest
import torch
from helpers import rel_err

import mirrorla.ops.naive as naive_all
from mirrorla.ops import (
    block_reflect,
    block_variance,
    causal_linear_attention,
    cross_head_reflect,
    linear_attention,
    modulated_angle,
    recurrent_step,
    softmax_attention,
)
from mirrorla.ops.linear_attention.naive import naive_linear_attention
from mirrorla.ops.reflections import mirror_features
from mirrorla.ops.reflections.naive import (
    dense_block_reflection,
    dense_cross_head_reflection,
    naive_block_variance,
    naive_mirror_features,
    naive_modulated_angle,
)
from mirrorla.ops.softmax.naive import naive_softmax_attention

OUT_TOL32, GRAD_TOL32, TOL64 = 1e-5, 1e-4, 1e-10


def out_and_grads(fn, *inputs):
    """fn's outputs and the gradients of <outputs, fixed random cotangent> w.r.t. every input."""
    xs = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(1234)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, xs, allow_unused=True)  # an input a switch leaves out: None
    return [o.detach() for o in outs], list(grads)


def assert_same(fast, ref, out_tol, grad_tol):
    (fo, fg), (ro, rg) = fast, ref
    for a, b in zip(fo, ro, strict=True):
        assert a.shape == b.shape
        assert rel_err(a, b) < out_tol, rel_err(a, b)
    for a, b in zip(fg, rg, strict=True):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert rel_err(a, b) < grad_tol, rel_err(a, b)


def features(B, H, N, F, D, M=None, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    M = N if M is None else M
    q = torch.randn(B, H, N, F, generator=gen, dtype=dtype).relu()
    k = torch.randn(B, H, M, F, generator=gen, dtype=dtype).relu()
    v = torch.randn(B, H, M, D, generator=gen, dtype=dtype)
    return q, k, v


# -- linear attention ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalizer": "sum"}, {"min_denominator": 20.0}, {"masked": True}],
    ids=["mean", "sum", "min_denominator", "key_padding_mask"],
)
def test_linear_attention_matches_naive_output_and_grads(kwargs):
    q, k, v = features(2, 3, 197, 8, 6, M=49)
    kwargs = dict(kwargs)
    if kwargs.pop("masked", False):
        mask = torch.ones(2, 49, dtype=torch.bool)
        mask[0, 31:] = False
        kwargs["key_padding_mask"] = mask
    fast = out_and_grads(lambda a, b, c: linear_attention(a, b, c, **kwargs), q, k, v)
    ref = out_and_grads(lambda a, b, c: naive_linear_attention(a, b, c, **kwargs), q, k, v)
    assert_same(fast, ref, OUT_TOL32, GRAD_TOL32)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("N", [49, 197])
def test_causal_linear_attention_matches_naive_output_and_grads(mode, N):
    q, k, v = features(2, 2, N, 8, 6)
    fast = out_and_grads(lambda a, b, c: causal_linear_attention(a, b, c, chunk_size=16, mode=mode), q, k, v)
    ref = out_and_grads(lambda a, b, c: naive_linear_attention(a, b, c, causal=True), q, k, v)
    assert_same(fast, ref, OUT_TOL32, GRAD_TOL32)


def test_recurrent_step_matches_naive_output_and_grads():
    q, k, v = features(2, 3, 49, 8, 5)

    def decode(a, b, c):
        state, outs = None, []
        for t in range(a.shape[2]):
            o, state = recurrent_step(state, a[:, :, t], b[:, :, t], c[:, :, t])
            outs.append(o)
        return torch.stack(outs, 2)

    fast = out_and_grads(decode, q, k, v)
    ref = out_and_grads(lambda a, b, c: naive_linear_attention(a, b, c, causal=True), q, k, v)
    assert_same(fast, ref, OUT_TOL32, GRAD_TOL32)


# -- softmax attention -----------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_matches_naive_output_and_grads(fused, causal):
    gen = torch.Generator().manual_seed(0)
    M = 49 if causal else 197
    q = torch.randn(2, 3, 49, 8, generator=gen)
    k, v = torch.randn(2, 3, M, 8, generator=gen), torch.randn(2, 3, M, 8, generator=gen)
    fast = out_and_grads(lambda a, b, c: softmax_attention(a, b, c, is_causal=causal, fused=fused), q, k, v)
    ref = out_and_grads(lambda a, b, c: naive_softmax_attention(a, b, c, causal=causal), q, k, v)
    assert_same(fast, ref, OUT_TOL32, GRAD_TOL32)


# -- reflections -----------------------------------------------------------------------------------
def test_cross_head_reflect_matches_dense_output_and_grads():
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 3, 49, 6
    x = torch.randn(B, H, N, D, generator=gen, dtype=torch.float64)
    u = torch.randn(H * D, generator=gen, dtype=torch.float64)

    def dense(x, u):  # (B, H, N, D) → (B, N, C) @ H_cᵀ → back
        xc = x.transpose(1, 2).reshape(B, N, H * D) @ dense_cross_head_reflection(u).T
        return xc.view(B, N, H, D).transpose(1, 2)

    assert_same(out_and_grads(cross_head_reflect, x, u), out_and_grads(dense, x, u), TOL64, TOL64)


@pytest.mark.parametrize("per_sample", [False, True])
def test_block_reflect_matches_dense_output_and_grads(per_sample):
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 3, 197, 10
    x = torch.randn(B, H, N, D, generator=gen, dtype=torch.float64)
    shape = (B, H, D // 2) if per_sample else (H, D // 2)
    angle = torch.rand(shape, generator=gen, dtype=torch.float64) * math.pi

    def dense(x, angle):
        return x @ dense_block_reflection(angle, D).transpose(-1, -2)

    assert_same(out_and_grads(block_reflect, x, angle), out_and_grads(dense, x, angle), TOL64, TOL64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_block_variance_matches_naive_output_and_grads(dtype, masked):
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = 3, 2, 49, 8
    M = N if masked else 197
    q = torch.randn(B, H, N, D, generator=gen, dtype=dtype) * 1.5 + 0.3
    k = torch.randn(B, H, M, D, generator=gen, dtype=dtype) * 0.7 - 0.2
    mask = None
    if masked:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[0, 30:] = False
        mask[2, :] = False  # no tokens at all: σ² = 0
    fast = out_and_grads(lambda a, b: block_variance(a, b, mask), q, k)
    ref = out_and_grads(lambda a, b: naive_block_variance(a, b, mask), q, k)
    tol = (OUT_TOL32, GRAD_TOL32) if dtype == torch.float32 else (TOL64, TOL64)
    assert_same(fast, ref, *tol)


def test_modulated_angle_matches_naive_output_and_grads():
    gen = torch.Generator().manual_seed(0)
    H, J = 3, 5
    theta = torch.rand(H, J, generator=gen, dtype=torch.float64) * math.pi
    alpha = torch.randn(H, J, generator=gen, dtype=torch.float64)
    var = torch.rand(2, H, J, generator=gen, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 10.0]).view(1, 3, 1)
    var[0, 0, 0] = 0.0  # zero variance: 1/(σ² + ε) = 1e6
    fast = out_and_grads(lambda t, a, s: modulated_angle(t, a, s, 1e-6), theta, alpha, var)
    ref = out_and_grads(lambda t, a, s: naive_modulated_angle(t, a, s, 1e-6), theta, alpha, var)
    assert_same(fast, ref, TOL64, TOL64)


SWITCHES = [s for s in itertools.product([False, True], repeat=3) if not (s[1] and not s[0])]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "".join("1" if v else "0" for v in s))
@pytest.mark.parametrize("masked", [False, True])
def test_mirror_features_matches_naive_output_and_grads(switches, masked):
    block, modulation, cross = switches
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 3, 197, 8
    q = torch.randn(B, H, N, D, generator=gen) * 1.5 + 0.2
    k = torch.randn(B, H, N, D, generator=gen) * 1.5 - 0.1
    u = torch.randn(H * D, generator=gen)
    theta = torch.rand(H, D // 2, generator=gen) * math.pi
    alpha = torch.full((H, D // 2), 0.1 * math.pi) + 0.3 * torch.randn(H, D // 2, generator=gen)
    mask = None
    if masked:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[1, 150:] = False

    def call(fn):
        def f(q, k, u, theta, alpha):
            return fn(
                q,
                k,
                u if cross else None,
                theta if block else None,
                alpha if modulation else None,
                key_padding_mask=mask,
            )

        return out_and_grads(f, q, k, u, theta, alpha)

    assert_same(call(mirror_features), call(naive_mirror_features), OUT_TOL32, GRAD_TOL32)


@pytest.mark.parametrize("modulation", [False, True])
def test_mirror_features_odd_negated_matches_naive(modulation):
    # odd_negated: the op receives S·x (odd channels negated) and must give φ of x.
    gen = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 2, 49, 6
    q, k = torch.randn(B, H, N, D, generator=gen), torch.randn(B, H, N, D, generator=gen)
    theta = torch.rand(H, D // 2, generator=gen) * math.pi
    alpha = torch.full((H, D // 2), 0.3)
    sign = torch.tensor([1.0, -1.0]).repeat(D // 2)
    a = alpha if modulation else None
    fast = out_and_grads(lambda q, k, t: mirror_features(q * sign, k * sign, None, t, a, odd_negated=True), q, k, theta)
    ref = out_and_grads(lambda q, k, t: naive_mirror_features(q, k, None, t, a), q, k, theta)
    assert_same(fast, ref, OUT_TOL32, GRAD_TOL32)


def test_naive_module_reexports_every_reference():
    # ``from … import``: ``import mirrorla.ops.linear_attention.naive as la`` resolves the name through
    # the attribute mirrorla.ops.linear_attention, which is the function, not the package.
    from mirrorla.ops.linear_attention import naive as la
    from mirrorla.ops.reflections import naive as rf
    from mirrorla.ops.softmax import naive as sm

    for mod in (la, rf, sm):
        for name in mod.__all__:
            assert getattr(naive_all, name) is getattr(mod, name)
    assert set(naive_all.__all__) == set(la.__all__) | set(rf.__all__) | set(sm.__all__)
