"""The device-dependent checks on CUDA (skipped without a GPU; scripts/gpu_check.sh runs them with the GPU benchmark).

Every registered attention against its CPU run, the linear-attention ops against the quadratic references,
the mixed-precision policy (bf16 GEMMs by default on CUDA) with ×100 inputs, the compiled (Triton) path
against eager, and the benchmark's CUDA-event clock.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

from mirrorla import create_attention, list_attentions
from mirrorla.ops.linear_attention import linear_attention, two_stream_linear_attention
from mirrorla.ops.linear_attention.common import gemm_dtype_of
from mirrorla.ops.linear_attention.naive import naive_linear_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DIM, HEADS = 64, 2


def _layer(name, seed=0):
    torch.manual_seed(seed)
    return create_attention(name, DIM, num_heads=HEADS)


@pytest.mark.parametrize("name", list_attentions())
def test_attention_on_cuda_matches_cpu_forward_and_backward(name):
    layer = _layer(name)
    x = torch.randn(2, 256, DIM)
    outs, grads = {}, {}
    for device in ("cpu", "cuda"):
        layer.to(device).zero_grad(set_to_none=True)
        xd = x.to(device).requires_grad_(True)
        y = layer(xd, hw=(16, 16))
        y.square().sum().backward()
        outs[device], grads[device] = y.detach().cpu(), xd.grad.cpu()
    assert rel_err(outs["cuda"], outs["cpu"]) < 1e-4  # TF32 is off by default for matmuls in PyTorch
    assert rel_err(grads["cuda"], grads["cpu"]) < 1e-3


@pytest.mark.parametrize("normalizer", ["mean", "sum"])
def test_ops_on_cuda_match_the_quadratic_reference(normalizer):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.rand(2, 3, 300, 16, device="cuda", generator=g) for _ in range(2))
    v = torch.randn(2, 3, 300, 8, device="cuda", generator=g)
    ref = naive_linear_attention(q.double(), k.double(), v.double(), normalizer=normalizer)
    assert rel_err(linear_attention(q, k, v, normalizer=normalizer).double(), ref) < 1e-5
    two = two_stream_linear_attention(q, k, v, normalizer=normalizer)
    assert two.shape == v.shape and torch.isfinite(two).all()


def test_bf16_autocast_uses_bf16_gemms_and_stays_finite_with_x100_inputs():
    v = torch.zeros(1, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert gemm_dtype_of(torch.float32, v) == torch.bfloat16  # the default policy on CUDA
    for name in list_attentions():
        layer = _layer(name).cuda()
        x = 100 * torch.randn(1, 16384, DIM, device="cuda")
        ref = layer(x, hw=(128, 128)).detach()
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(xg, hw=(128, 128))
        out.float().mean().backward()
        assert torch.isfinite(out).all() and torch.isfinite(xg.grad).all(), name
        assert rel_err(out.float(), ref) < (1e-1 if "softmax" in name else 2e-2), name


@pytest.mark.parametrize("name", ["mirror", "linear_relu", "pola", "nala"])
def test_compiled_layer_on_cuda_matches_eager(name):
    layer = _layer(name).cuda()
    x = torch.randn(2, 1024, DIM, device="cuda")
    ref = layer(x, hw=(32, 32))
    out = torch.compile(layer, fullgraph=True)(x, hw=(32, 32))
    assert rel_err(out, ref) < 1e-4


def test_bench_times_cuda_with_events():
    from mirrorla.bench.timing import time_callable

    a = torch.randn(2048, 2048, device="cuda")
    result = time_callable(lambda: a @ a, torch.device("cuda"), repeats=3)
    assert result["clock"] == "cuda events" and result["median_ms"] > 0
