"""The fast focusing op (ops/focus.py) against its reference composition, outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mirrorla.ops.focus import focus, focused_features

B, N, H, D = 2, 7, 3, 4


def reference(q, sigma, power, dims, offset=1e-6):
    return focus((F.relu(q) + offset) / sigma, power, dims)


def head_split_view(dtype=torch.float64, scale=1.0):
    """q as the layer sees it: a (B, H, N, D) view of a wider (B, N, 3C) projection output."""
    qkv = (torch.randn(B, N, 3 * H * D, dtype=dtype) * scale).requires_grad_()
    return qkv, qkv[..., : H * D].view(B, N, H, D).transpose(1, 2)


def sigma_of(dtype=torch.float64):
    return F.softplus(torch.randn(1, H, 1, D, dtype=dtype)).requires_grad_()


@pytest.mark.parametrize("dims", [(1, 3), (3,)])
@pytest.mark.parametrize("power", [3.0, 1.5])
@pytest.mark.parametrize("grad_layout", ["contiguous", "transposed"])
def test_matches_reference_outputs_and_gradients(dims, power, grad_layout):
    qkv, q = head_split_view()
    sigma = sigma_of()
    fast = focused_features(q, sigma, power=power, dims=dims, offset=1e-6)
    ref = reference(q, sigma, power, dims)
    assert rel_err(fast, ref) < 1e-12
    g = torch.randn_like(ref)
    if grad_layout == "transposed":  # as the state GEMM returns ∂L/∂φK: each head a (D, N) matrix
        g = g.transpose(-1, -2).contiguous().transpose(-1, -2)
    grads_fast = torch.autograd.grad(fast, (qkv, sigma), g)
    grads_ref = torch.autograd.grad(ref, (qkv, sigma), g)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        assert rel_err(a, b) < 1e-10
    assert grads_fast[0][..., H * D :].abs().max() == 0  # k and v channels of the projection untouched


@pytest.mark.parametrize("dims", [(1, 3), (3,)])
def test_gradcheck(dims):
    q = torch.randn(B, H, 3, D, dtype=torch.float64, requires_grad=True)
    sigma = sigma_of()
    assert torch.autograd.gradcheck(lambda q, s: focused_features(q, s, power=3.0, dims=dims, offset=1e-6), (q, sigma))


def test_negative_entries_get_no_gradient_through_the_relu():
    q = torch.randn(1, H, 5, D, dtype=torch.float64, requires_grad=True)
    out = focused_features(q, sigma_of(), power=3.0, dims=(1, 3), offset=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert (grad[q <= 0] == 0).all() and (grad[q > 0] != 0).any()


def test_only_the_needed_gradient_is_formed():
    q = torch.randn(1, H, 5, D, dtype=torch.float64, requires_grad=True)
    sigma = F.softplus(torch.randn(1, H, 1, D, dtype=torch.float64))  # a constant scale
    out = focused_features(q, sigma, power=3.0, dims=(1, 3), offset=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert rel_err(grad, torch.autograd.grad(reference(q, sigma, 3.0, (1, 3)).sum(), q)[0]) < 1e-10


@pytest.mark.parametrize("scale", [1e-8, 1e4])
def test_fp32_stays_finite_and_accurate_at_extreme_scales(scale):
    # 1e-8: the direct formula's ‖x³‖ underflows in fp32; 1e4: ‖x³‖² = 1e24² would overflow without the max.
    _, q = head_split_view(torch.float32, scale)
    q = q.detach().requires_grad_()
    sigma = sigma_of(torch.float32).detach()
    out = focused_features(q, sigma, power=3.0, dims=(1, 3), offset=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), q)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert rel_err(out, reference(q.detach().double(), sigma.double(), 3.0, (1, 3))) < 1e-5


def test_empty_sequence():
    q = torch.randn(B, H, 0, D, requires_grad=True)
    out = focused_features(q, sigma_of(torch.float32), power=3.0, dims=(1, 3), offset=1e-6)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_double_backward_raises_instead_of_a_wrong_second_derivative():
    q = torch.randn(1, H, 3, D, dtype=torch.float64, requires_grad=True)
    out = focused_features(q, sigma_of(), power=3.0, dims=(1, 3), offset=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_bad_sigma_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"sigma \(1, H, 1, D\)"):
        focused_features(torch.randn(1, H, 3, D), torch.ones(1, 1, H * D), power=3.0, dims=(1, 3), offset=1e-6)


def test_the_focused_map_switches_to_the_reference_with_the_global_default():
    from mirrorla.feature_maps import FocusedFeatureMap
    from mirrorla.feature_maps.base import set_fast_path
    from mirrorla.feature_maps.mirror import set_fast_path as mirror_set_fast_path

    assert mirror_set_fast_path is set_fast_path  # one switch for every map with a fast path
    assert FocusedFeatureMap(H, D).fast_path
    set_fast_path(False)
    try:
        ref = FocusedFeatureMap(H, D).double()
    finally:
        set_fast_path(True)
    fast = FocusedFeatureMap(H, D).double()
    assert not ref.fast_path and fast.fast_path
    q, k = (torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out_ref, out_fast = ref(q, k), fast(q, k)
    for a, b in zip(out_ref, out_fast, strict=True):
        assert rel_err(a, b) < 1e-12
    g_ref = torch.autograd.grad(sum(o.square().sum() for o in out_ref), (q, k))
    g_fast = torch.autograd.grad(sum(o.square().sum() for o in out_fast), (q, k))
    for a, b in zip(g_ref, g_fast, strict=True):
        assert rel_err(a, b) < 1e-10
