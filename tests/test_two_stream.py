"""The one-pass two-stream op of PolaFormer against two quadratic reference attentions."""

from __future__ import annotations

import pytest
import torch

from mirrorla.ops.linear_attention import linear_attention, two_stream_linear_attention
from mirrorla.ops.linear_attention.naive import naive_linear_attention
from mirrorla.ops.linear_attention.two_stream import swap_halves


def reference(phi_q, phi_k, v, normalizer="mean", eps=1e-6, key_padding_mask=None, stream_scale=None):
    """[LA(φq, φk, V¹) | LA(swap(φq), φk, V²)] from two quadratic attentions (``chunk(2)`` split of V)."""
    v1, v2 = v.chunk(2, dim=-1)
    kw = dict(normalizer=normalizer, eps=eps, key_padding_mask=key_padding_mask)
    out = torch.cat(
        [naive_linear_attention(phi_q, phi_k, v1, **kw), naive_linear_attention(swap_halves(phi_q), phi_k, v2, **kw)],
        dim=-1,
    )
    return out if stream_scale is None else out * stream_scale[None, :, None, :]


def features(B, H, N, M, F, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi_q = torch.rand(B, H, N, F, generator=g, dtype=dtype)
    phi_k = torch.rand(B, H, M, F, generator=g, dtype=dtype)
    v = torch.randn(B, H, M, D, generator=g, dtype=dtype)
    return phi_q, phi_k, v


def test_swap_halves():
    x = torch.arange(6.0)
    assert swap_halves(x).tolist() == [3.0, 4.0, 5.0, 0.0, 1.0, 2.0]
    assert torch.equal(swap_halves(swap_halves(x)), x)


@pytest.mark.parametrize("D", [6, 5])  # even: one division over a (2, D/2) view; odd: V¹ gets ⌈D/2⌉
@pytest.mark.parametrize("normalizer", ["mean", "sum"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_matches_two_reference_streams(D, normalizer, masked, scaled):
    B, H, N, M, F = 2, 3, 7, 9, 8
    phi_q, phi_k, v = features(B, H, N, M, F, D)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1, 5:] = False
    kpm = mask if masked else None
    scale = torch.rand(H, D, dtype=torch.float64) + 0.5 if scaled else None
    out = two_stream_linear_attention(phi_q, phi_k, v, normalizer=normalizer, key_padding_mask=kpm, stream_scale=scale)
    ref = reference(phi_q, phi_k, v, normalizer, key_padding_mask=kpm, stream_scale=scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_one_stream_is_the_plain_linear_attention():
    phi_q, phi_k, v = features(1, 2, 5, 5, 6, 4)
    out = two_stream_linear_attention(phi_q, phi_k, v)
    torch.testing.assert_close(out[..., :2], linear_attention(phi_q, phi_k, v[..., :2]))


def test_gradients():
    phi_q, phi_k, v = features(1, 2, 4, 5, 4, 3)
    scale = torch.rand(2, 3, dtype=torch.float64) + 0.5
    inputs = [t.requires_grad_(True) for t in (phi_q, phi_k, v, scale)]
    assert torch.autograd.gradcheck(lambda q, k, vv, s: two_stream_linear_attention(q, k, vv, stream_scale=s), inputs)


def test_float32_matches_float64_reference():
    phi_q, phi_k, v = features(2, 2, 64, 64, 16, 8, dtype=torch.float32)
    out = two_stream_linear_attention(phi_q, phi_k, v)
    ref = reference(phi_q.double(), phi_k.double(), v.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_bad_input_is_a_clear_error():
    phi_q, phi_k, v = features(1, 2, 4, 4, 5, 4)
    with pytest.raises(ValueError, match="feature dim.*even"):
        two_stream_linear_attention(phi_q, phi_k, v)
    phi_q, phi_k, v = features(1, 2, 4, 4, 6, 4)
    with pytest.raises(ValueError, match=r"stream_scale must have shape \(H, D\)"):
        two_stream_linear_attention(phi_q, phi_k, v, stream_scale=torch.ones(2, 3, dtype=torch.float64))
