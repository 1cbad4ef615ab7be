"""Normalised linear attention: non-causal (kv-first) and causal (chunked / recurrent).

Dimension letters: B batch, H heads, N query tokens, M key tokens, F feature dim of the feature
map (m in the spec), D value head dim.

Every function here takes *already mapped* features φq (B, H, N, F) and φk (B, H, M, F) whose
pairwise scores φq·φk are non-negative, and values v (B, H, M, D). See docs/methods.md §1.

Precision policy (docs/methods.md §1.1): autocast is disabled inside, φq, φk and v are upcast to fp32
(``core_dtype``), states and the denominator are fp32, and the output is cast back to v's dtype.
Mixed precision: on the devices of :func:`set_bf16_gemm_devices` (default CUDA), the non-causal
forms run their two GEMMs φKᵀV and φQ·S in bf16 (fp32 accumulation inside the GEMM) under bf16
autocast or for bf16 values; z and the denominator stay fp32. fp16 never: φ exceeds its range.

Layout (as flash-linear-attention's ``fla/ops/<op>/``): ``parallel.py`` the non-causal kv-first
form, ``chunk.py`` the causal chunked form, ``recurrent.py`` the token-by-token decoding step,
``naive.py`` the quadratic reference every fast form is tested against.
"""

from mirrorla.ops.linear_attention.chunk import causal_linear_attention
from mirrorla.ops.linear_attention.common import NORMALIZERS, bf16_gemm_devices, set_bf16_gemm_devices
from mirrorla.ops.linear_attention.parallel import linear_attention
from mirrorla.ops.linear_attention.recurrent import recurrent_step
from mirrorla.ops.linear_attention.two_stream import two_stream_linear_attention

__all__ = [
    "linear_attention",
    "causal_linear_attention",
    "recurrent_step",
    "two_stream_linear_attention",
    "NORMALIZERS",
    "bf16_gemm_devices",
    "set_bf16_gemm_devices",
]
