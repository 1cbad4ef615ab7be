"""Mixed precision: the bf16 GEMM policy of the non-causal core, and every attention finite and close to
fp32 under bf16 and fp16 autocast with ×100 inputs (docs/efficiency.md, "Mixed precision")."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

from mirrorla import create_attention, list_attentions
from mirrorla.ops.linear_attention import (
    bf16_gemm_devices,
    linear_attention,
    set_bf16_gemm_devices,
    two_stream_linear_attention,
)
from mirrorla.ops.linear_attention.common import gemm_dtype_of

DIM, HEADS = 32, 2


@pytest.fixture
def bf16_gemms_on_cpu():
    before = bf16_gemm_devices()
    set_bf16_gemm_devices({"cpu", "cuda"})
    yield
    set_bf16_gemm_devices(before)


@pytest.fixture
def bf16_gemms_off():
    before = bf16_gemm_devices()
    set_bf16_gemm_devices(set())
    yield
    set_bf16_gemm_devices(before)


def test_default_policy_is_cuda_only():
    assert bf16_gemm_devices() == frozenset({"cuda"})


def test_gemm_dtype_follows_values_autocast_and_device(bf16_gemms_on_cpu):
    f32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    assert gemm_dtype_of(torch.float32, f32) == torch.float32
    assert gemm_dtype_of(torch.float32, bf16) == torch.bfloat16
    assert gemm_dtype_of(torch.float64, bf16) == torch.float64  # gradcheck stays float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm_dtype_of(torch.float32, f32) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert gemm_dtype_of(torch.float32, f32) == torch.float32  # never fp16
    set_bf16_gemm_devices({"cuda"})
    assert gemm_dtype_of(torch.float32, bf16) == torch.float32  # CPU not in the policy


def _features(N=256, F=16, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(2, 2, N, F, generator=g),
        torch.rand(2, 2, N, F, generator=g),
        torch.randn(2, 2, N, D, generator=g),
    )


@pytest.mark.parametrize("op", ["linear", "two_stream"])
def test_bf16_gemms_run_in_bf16_and_stay_close(op, bf16_gemms_on_cpu):
    q, k, v = _features()
    fn = linear_attention if op == "linear" else two_stream_linear_attention
    ref = fn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(q, k, v)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert 1e-5 < err < 2e-2  # bf16 rounding is visible (the GEMMs ran in bf16) and small
    set_bf16_gemm_devices(set())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fn(q, k, v), ref)  # policy off: the fp32 core, bit for bit


def test_bf16_values_give_a_bf16_output_and_an_fp32_denominator(bf16_gemms_on_cpu):
    q, k, v = _features()
    out = linear_attention(q, k, v.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), linear_attention(q, k, v.bfloat16().float())) < 2e-2


def _layer_case(name, N, scale, seed=0):
    torch.manual_seed(seed)
    layer = create_attention(name, DIM, num_heads=HEADS)
    side = int(N**0.5)
    x = scale * torch.randn(1, N, DIM)
    return layer, x, (side, side)


def _check_autocast(name, N, dtype, scale=100.0):
    layer, x, hw = _layer_case(name, N, scale)
    xg = x.clone().requires_grad_(True)
    ref = layer(x, hw=hw).detach()
    with torch.autocast("cpu", dtype=dtype):
        out = layer(xg, hw=hw)
    out.float().mean().backward()  # a mean loss: a sum of 131k outputs at ×100 has fp32 gradients > fp16 max
    assert torch.isfinite(out).all(), f"{name}: non-finite output under {dtype} autocast"
    assert torch.isfinite(xg.grad).all(), f"{name}: non-finite input gradient"
    for pname, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}: non-finite gradient of {pname}"
    return rel_err(out.float(), ref)


# Relative error against the fp32 layer, observed at N = 4096, ×100 inputs, bf16 GEMMs on: linear
# attentions ≤ 7.7e-3 (bf16) and ≤ 9.2e-4 (fp16, fp32 core); softmax and window softmax 4.7e-2 (bf16)
# and 6.3e-3 (fp16): their logits of ×100 inputs are rounded by autocast's low-precision q·k GEMM.
LIMITS = {torch.bfloat16: 2e-2, torch.float16: 3e-3}
SOFTMAX_FACTOR = 5.0


def limit(name, dtype):
    return LIMITS[dtype] * (SOFTMAX_FACTOR if "softmax" in name else 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list_attentions())
def test_every_attention_is_finite_and_close_under_autocast(name, dtype, bf16_gemms_on_cpu):
    assert _check_autocast(name, 4096, dtype) < limit(name, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list_attentions())
def test_every_attention_is_finite_at_65536_tokens_under_autocast(name, dtype, bf16_gemms_on_cpu):
    assert _check_autocast(name, 65536, dtype) < limit(name, dtype)
