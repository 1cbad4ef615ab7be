"""The linear-attention ops against their quadratic references (docs/methods.md §1)."""

import pytest
import torch
from helpers import AllocationTracker, rel_err

from mirrorla.ops import causal_linear_attention, linear_attention, recurrent_step, softmax_attention
from mirrorla.ops.naive import naive_linear_attention, naive_softmax_attention


def features(B, H, N, F, D, M=None, dtype=torch.float32):
    M = N if M is None else M
    q = torch.randn(B, H, N, F, dtype=dtype).relu()
    k = torch.randn(B, H, M, F, dtype=dtype).relu()
    v = torch.randn(B, H, M, D, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("N", [1, 63, 197, 1000])
@pytest.mark.parametrize("normalizer", ["mean", "sum"])
def test_noncausal_matches_naive(N, normalizer):
    q, k, v = features(2, 3, N, 16, 8)
    out = linear_attention(q, k, v, normalizer=normalizer)
    ref = naive_linear_attention(q, k, v, normalizer=normalizer)
    assert out.shape == (2, 3, N, 8)
    assert rel_err(out, ref) < 1e-5


def test_cross_attention_lengths():
    q, k, v = features(2, 2, 50, 8, 4, M=77)
    assert rel_err(linear_attention(q, k, v), naive_linear_attention(q, k, v)) < 1e-5


def test_mean_form_equals_sum_form_with_scaled_eps():
    q, k, v = features(1, 2, 40, 8, 8)
    mean = linear_attention(q, k, v, normalizer="mean", eps=1e-3)
    summ = linear_attention(q, k, v, normalizer="sum", eps=1e-3 * 40)
    assert rel_err(mean, summ) < 1e-6


def test_min_denominator_matches_naive_and_clamps():
    q, k, v = features(2, 2, 30, 8, 8)
    q = q * 0.01  # small scores: the clamp is active for most rows
    out = linear_attention(q, k, v, min_denominator=100.0)
    ref = naive_linear_attention(q, k, v, min_denominator=100.0)
    assert rel_err(out, ref) < 1e-5
    row = (q @ k.transpose(-2, -1)).sum(-1)
    assert (row < 100).float().mean() > 0.5  # the test really exercises the clamp


def test_key_padding_mask_matches_naive_and_truncation():
    q, k, v = features(2, 2, 37, 8, 8)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[0, 30:] = False
    mask[1, 11:20] = False
    out = linear_attention(q, k, v, key_padding_mask=mask)
    ref = naive_linear_attention(q, k, v, key_padding_mask=mask)
    assert rel_err(out, ref) < 1e-5
    # Sample 0 with its padding dropped gives the same result as masking it.
    short = linear_attention(q[:1], k[:1, :, :30], v[:1, :, :30])
    assert rel_err(out[:1], short) < 1e-5
    # Masked keys with huge values change nothing.
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 30:] = 1e4
    v2[0, :, 30:] = -1e4
    assert rel_err(linear_attention(q, k2, v2, key_padding_mask=mask), out) < 1e-6


def test_normalize_false_returns_numerator():
    q, k, v = features(1, 1, 20, 4, 4)
    num = linear_attention(q, k, v, normalize=False)
    assert rel_err(num, q @ (k.transpose(-2, -1) @ v) / 20) < 1e-6


@pytest.mark.parametrize("N", [1, 63, 64, 65, 500])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_causal_chunk_recurrent_reference_agree(N, chunk_size):
    q, k, v = features(2, 2, N, 8, 6)
    ref = naive_linear_attention(q, k, v, causal=True)
    chunk = causal_linear_attention(q, k, v, chunk_size=chunk_size)
    assert rel_err(chunk, ref) < 1e-5
    if N <= 65 or chunk_size == 64:
        rec = causal_linear_attention(q, k, v, mode="recurrent")
        assert rel_err(rec, ref) < 1e-5
    assert rel_err(linear_attention(q, k, v, causal=True, chunk_size=chunk_size), ref) < 1e-5


def test_causal_state_carries_prefill_into_decoding():
    q, k, v = features(2, 3, 70, 8, 5)
    full = causal_linear_attention(q, k, v)
    out, state = causal_linear_attention(q[:, :, :50], k[:, :, :50], v[:, :, :50], return_state=True)
    steps = []
    for t in range(50, 70):
        o, state = recurrent_step(state, q[:, :, t], k[:, :, t], v[:, :, t])
        steps.append(o)
    assert rel_err(torch.cat([out, torch.stack(steps, 2)], 2), full) < 1e-5
    # Chunked continuation from a state agrees too.
    _, st = causal_linear_attention(q[:, :, :33], k[:, :, :33], v[:, :, :33], return_state=True)
    tail = causal_linear_attention(q[:, :, 33:], k[:, :, 33:], v[:, :, 33:], initial_state=st, chunk_size=16)
    assert rel_err(tail, full[:, :, 33:]) < 1e-5


def test_causality_future_tokens_do_not_leak():
    q, k, v = features(1, 2, 40, 8, 8)
    base = causal_linear_attention(q, k, v, chunk_size=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 25:] += 5.0
    v2[:, :, 25:] -= 3.0
    pert = causal_linear_attention(q, k2, v2, chunk_size=16)
    assert torch.equal(base[:, :, :25], pert[:, :, :25])
    assert not torch.allclose(base[:, :, 25:], pert[:, :, 25:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_do_not_overflow(dtype):
    # Sum-form states would reach ~M·30·30 = 3.7e6 > fp16 max; the fp32 core keeps them finite.
    q, k, v = features(1, 2, 4096, 16, 16)
    q, k, v = q * 30, k * 30, v * 30
    out = linear_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, naive_linear_attention(q, k, v)) < 2e-2
    causal = causal_linear_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert torch.isfinite(causal).all()


def test_gradients_match_naive():
    q, k, v = features(2, 2, 23, 6, 5, dtype=torch.float64)
    for causal in (False, True):
        grads = []
        for fn in (linear_attention, naive_linear_attention):
            qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
            fn(qq, kk, vv, causal=causal).pow(2).sum().backward()
            grads.append([qq.grad, kk.grad, vv.grad])
        for a, b in zip(*grads, strict=True):
            assert rel_err(a, b) < 1e-10


def test_gradcheck_ops():
    q, k, v = features(1, 2, 7, 4, 3, dtype=torch.float64)
    q, k, v = (t + 0.1 for t in (q, k, v))  # away from ReLU kinks
    args = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: linear_attention(a, b, c), args)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_linear_attention(a, b, c, chunk_size=3), args)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_linear_attention(a, b, c, mode="recurrent"), args)


def test_noncausal_never_builds_an_n_by_m_tensor_and_memory_is_linear():
    def run(N):
        q, k, v = features(1, 2, N, 32, 32)
        with AllocationTracker() as tr:
            linear_attention(q, k, v)
        return tr

    small, large = run(1024), run(4096)
    assert large.max_numel < 4096 * 4096
    assert large.peak / small.peak < 5.0  # O(N): 4x tokens → ~4x bytes (O(N²) would be 16x)
    # The tracker can fail: the naive path builds the full matrix.
    q, k, v = features(1, 2, 512, 8, 8)
    with AllocationTracker() as tr:
        naive_linear_attention(q, k, v)
    assert tr.max_numel >= 2 * 512 * 512


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_fused_unfused_naive(causal):
    q, k, v = (torch.randn(2, 3, 33, 8) for _ in range(3))
    ref = naive_softmax_attention(q, k, v, causal=causal)
    assert rel_err(softmax_attention(q, k, v, is_causal=causal), ref) < 1e-5
    assert rel_err(softmax_attention(q, k, v, is_causal=causal, fused=False), ref) < 1e-5


def test_bad_inputs_raise_clear_errors():
    q, k, v = features(1, 2, 8, 4, 4)
    with pytest.raises(ValueError, match="4 dims"):
        linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match="shapes disagree"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        linear_attention(q.numpy(), k, v)
    with pytest.raises(ValueError, match="normalizer"):
        linear_attention(q, k, v, normalizer="max")
    with pytest.raises(ValueError, match="chunk_size"):
        causal_linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        linear_attention(q, k, v, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        linear_attention(q, k, v, key_padding_mask=torch.ones(1, 8))
    with pytest.raises(ValueError, match="state"):
        causal_linear_attention(q, k, v, initial_state=(torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="as many queries as keys"):
        causal_linear_attention(q, k[:, :, :5], v[:, :, :5])


@pytest.mark.parametrize("causal", [False, True])
def test_state_scale_scales_the_numerator_only(causal):
    q, k, v = features(2, 3, 40, 8, 4)
    tau = torch.rand(3, 1, 1) + 0.5  # per head, as L²ViT's τ
    kw = dict(causal=causal, normalizer="sum" if causal else "mean")
    out = linear_attention(q, k, v, state_scale=tau, **kw)
    assert rel_err(out, linear_attention(q, k, v, **kw) * tau) < 1e-6
    assert rel_err(out, naive_linear_attention(q, k, v, **kw) * tau) < 1e-5


def test_state_product_matches_the_plain_product_and_returns_row_major_gradients():
    from mirrorla.ops.linear_attention.parallel import state_product

    qkv = torch.randn(2, 11, 3, 3, 4, dtype=torch.float64, requires_grad=True)  # (B, M, 3, H, D) projection
    k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # head-split views, as in a layer
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ours = state_product(k, v)
    plain = k.transpose(-2, -1) @ v
    assert torch.allclose(ours, plain, rtol=1e-14, atol=0)
    gk, gv = torch.autograd.grad(ours, (k, v), g)
    pk, pv = torch.autograd.grad(plain, (k, v), g)
    assert torch.allclose(gk, pk, rtol=1e-13) and torch.allclose(gv, pv, rtol=1e-13)
    assert gk.stride(-1) == 1 and gv.stride(-1) == 1  # unit stride along F and D, not along M
    k2, v2 = (torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(state_product, (k2, v2))
    assert torch.autograd.gradgradcheck(state_product, (k2, v2))
