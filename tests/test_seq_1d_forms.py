"""A 1-D sequence of N tokens is the token grid hw=(1, N): each grid part then has a 1-D form.

Every part of ``src/mirrorla/layers/`` that reads the grid is compared, at hw=(1, N), with a plain 1-D
reference written here (shifted sums, explicit cos/sin, explicit window loops), output and gradients:

* ``DepthwiseConvBranch`` (flatten, pola, mirror_dwc: one kernel shared by the heads; nala, nala_cos:
  per channel), ``LocalConcentrationModule``, ``ConvPositionEncoding``: a k×k depthwise conv with
  padding k//2 on a height-1 grid is the 1-D depthwise conv with the kernel's middle row; the other
  k − 1 rows only ever meet the zero padding, so their gradient is exactly 0.
* ``AxialRoPE``: the row angle is 0, so the first D/4 pairs are not rotated; the last D/4 pairs
  rotate by the sequence position (a 1-D RoPE on half of the pairs).
* ``LocalWindowAttention``: with padded keys masked (default), softmax inside 1×w windows of
  consecutive tokens; with ``l2vit_compat=True`` each window also holds w·(w − 1) padded zero rows
  (plus the right padding) whose keys and values are the qkv bias.
* ``LearnedPositionEmbedding``: a bicubic resize (a = −0.75, ``align_corners=False``) of the table to
  (1, N); a (Hp, Wp) table collapses to a blend of ≤ 4 rows.
* ``SpatialReductionAttention`` with sr_ratio > 1 refuses a height-1 grid.

Dimension letters: B batch, N tokens (P prefix + L spatial), C channels, H heads, D head dim,
k kernel size, w window side.

Tolerances: fp32 against the reference, relative RMS error ≤ 1e-5 (the oracle tolerance of
docs/methods.md §1.1: a few fp32 roundings per output); fp64, ≤ 1e-10. RoPE in fp32 rounds the angle
β = n·ω to fp32, an error of up to ½ulp(β) ≤ β·2⁻²⁴ rad that grows with the position; its fp32 test
states that bound.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from torch import nn

import mirrorla
from mirrorla.layers import LocalWindowAttention, SpatialReductionAttention
from mirrorla.layers.l2vit import ConvPositionEncoding, LocalConcentrationModule
from mirrorla.layers.nala import AxialRoPE
from mirrorla.layers.parts import DepthwiseConvBranch, LearnedPositionEmbedding
from mirrorla.registry import create_attention

AWKWARD_N = (1, 7, 197, 1000)
FP32_TOL, FP64_TOL = 1e-5, 1e-10
DIM, HEADS = 32, 2


# -- plain 1-D references --------------------------------------------------------------------------


def shift_conv1d(x, weight, bias):
    """Depthwise 'same' 1-D convolution as a sum of shifted copies: x (B, C, L), weight (C, k), bias (C,).

    out[:, c, i] = bias[c] + Σ_t weight[c, t] · x[:, c, i + t − k//2], zero outside 0 … L − 1
    (cross-correlation, as torch convolutions). Independent of torch's convolution kernels.
    """
    B, C, L = x.shape
    k = weight.shape[-1]
    padded = F.pad(x, (k // 2, k // 2))
    out = bias[None, :, None].expand(B, C, L)
    for t in range(k):
        out = out + weight[None, :, t, None] * padded[:, :, t : t + L]
    return out


def middle_row(conv: nn.Conv2d):
    """(C, 1, k, k) depthwise weight → (C, k): the only row a height-1 grid reaches."""
    k = conv.kernel_size[0]
    return conv.weight[:, 0, k // 2, :]


def dwc_reference(branch: DepthwiseConvBranch, v, num_prefix_tokens):
    """v (B, H, N, D) → (B, N, C): 1-D conv of each head's values along the sequence, prefix rows 0."""
    B, H, N, D = v.shape
    L = N - num_prefix_tokens
    spatial = v[:, :, num_prefix_tokens:].permute(0, 1, 3, 2)  # (B, H, D, L)
    w, b = middle_row(branch.conv), branch.conv.bias
    if branch.shared:  # one D-channel kernel for every head
        out = shift_conv1d(spatial.reshape(B * H, D, L), w, b)
    else:  # channel h·D + d has its own kernel
        out = shift_conv1d(spatial.reshape(B, H * D, L), w, b)
    out = out.reshape(B, H, D, L).permute(0, 3, 1, 2).reshape(B, L, H * D)
    return torch.cat([out.new_zeros(B, num_prefix_tokens, H * D), out], dim=1)


def rope_reference(x, head_dim, num_prefix_tokens, base=10000.0):
    """x (B, H, N, m·D): pairs j < D/4 of every D-chunk untouched; pair j ≥ D/4 of the spatial token at
    sequence position n (0-based after the prefix) rotated by n·ω_{j−D/4}; prefix tokens untouched.

    ω_i = 1 / base^{i/(D/4 − 1)} in float32 as NaLaFormer's ``RoPE`` defines it; β, cos and sin in float64.
    """
    D, N = head_dim, x.shape[-2]
    omega = (1.0 / (base ** torch.linspace(0, 1, D // 4, dtype=torch.float32))).double()
    pos = (torch.arange(N, dtype=torch.float64) - num_prefix_tokens).clamp_min(0)[:, None]  # (N, 1)
    channels = list(x.double().unbind(-1))
    for chunk in range(x.shape[-1] // D):
        for j in range(D // 4, D // 2):
            beta = pos[:, 0] * omega[j - D // 4]
            c0 = chunk * D + 2 * j
            a, b = channels[c0], channels[c0 + 1]
            channels[c0] = a * beta.cos() - b * beta.sin()
            channels[c0 + 1] = b * beta.cos() + a * beta.sin()
    return torch.stack(channels, dim=-1).to(x.dtype)


def _cubic(t, a=-0.75):
    """Keys' cubic convolution kernel with a = −0.75 (the one torch's bicubic uses)."""
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0


def cubic_resize_matrix(n_in, n_out):
    """(n_out, n_in) float64 matrix of a 1-D bicubic resize, align_corners=False, border taps clamped.

    Output i samples source coordinate s = (i + ½)·n_in/n_out − ½ from the 4 taps ⌊s⌋ − 1 … ⌊s⌋ + 2.
    """
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        s = (i + 0.5) * n_in / n_out - 0.5
        f = math.floor(s)
        for tap in range(f - 1, f + 3):
            m[i, min(max(tap, 0), n_in - 1)] += _cubic(s - tap)
    return m


def pos_embed_reference(pe: LearnedPositionEmbedding, length, num_prefix_tokens):
    """The (Hp, Wp) table at the runtime grid (1, L): rows blended by the Hp → 1 resize, columns by Wp → L."""
    Hp, Wp = pe.grid
    table = pe.weight[0].double().reshape(Hp, Wp, -1)
    rows, cols = cubic_resize_matrix(Hp, 1)[0], cubic_resize_matrix(Wp, length)
    out = torch.einsum("r,lc,rcx->lx", rows, cols, table).to(pe.weight.dtype)
    return F.pad(out, (0, 0, num_prefix_tokens, 0))[None]


def window_reference(layer: LocalWindowAttention, x, key_padding_mask=None):
    """Softmax inside 1×w windows of consecutive tokens [s, s + w), last one short. With ``l2vit_compat``
    each window also holds w² − (its real tokens) padded zero rows: keys and values = the qkv bias."""
    B, N, C = x.shape
    w, H, D = layer.window_size, layer.num_heads, layer.head_dim
    qkv = layer.qkv(x).view(B, N, 3, H, D)
    pad_qkv = layer.qkv.bias.view(3, H, D)
    out = []
    for s in range(0, N, w):
        q, k, v = qkv[:, s : s + w].unbind(2)  # (B, l, H, D)
        keep = (
            torch.ones(B, q.shape[1], dtype=torch.bool) if key_padding_mask is None else key_padding_mask[:, s : s + w]
        )
        if layer.l2vit_compat:
            n_pad = w * w - q.shape[1]
            k = torch.cat([k, pad_qkv[1].expand(B, n_pad, H, D)], dim=1)
            v = torch.cat([v, pad_qkv[2].expand(B, n_pad, H, D)], dim=1)
            keep = torch.cat([keep, keep.new_ones(B, n_pad)], dim=1)
        scores = torch.einsum("blhd,bmhd->bhlm", q, k) * D**-0.5
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        out.append(torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v))
    return layer.proj(torch.cat(out, dim=1).reshape(B, N, C))


def batch_norm_reference(y, bn: nn.BatchNorm2d, running_mean, running_var):
    """BatchNorm over (B, L) per channel of y (B, C, L); training mode updates the given running stats."""
    if bn.training:
        n = y.shape[0] * y.shape[2]
        mean, var = y.mean((0, 2)), y.var((0, 2), unbiased=False)
        with torch.no_grad():
            running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean)
            running_var.mul_(1 - bn.momentum).add_(bn.momentum * var * n / max(n - 1, 1))
    else:
        mean, var = running_mean, running_var
    y_hat = (y - mean[None, :, None]) / torch.sqrt(var[None, :, None] + bn.eps)
    return y_hat * bn.weight[None, :, None] + bn.bias[None, :, None]


def gelu_reference(y):
    return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))


# -- helpers -------------------------------------------------------------------------------------


def perturb_(module, scale=0.1):
    """Move every parameter off its init (zero tables, zero biases, unit norms) so that each one matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def grads(out, inputs, seed=1):
    """Gradients of ⟨out, r⟩ for a fixed random r (not all-ones: a sum hides sign errors)."""
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad((out * r).sum(), inputs, allow_unused=True)


def assert_close(a, b, dtype):
    tol = FP64_TOL if dtype == torch.float64 else FP32_TOL
    err = rel_err(a, b)
    assert err <= tol, f"relative RMS error {err:.3g} > {tol:g}"


def conv_tap_support(k, length):
    """Bool (k, k): the taps of a k×k 'same' kernel that a (1, L) grid reaches: the middle row, and in it
    only the offsets |t| ≤ L − 1 (a shorter sequence never reaches the outer taps)."""
    support = torch.zeros(k, k, dtype=torch.bool)
    for t in range(k):
        support[k // 2, t] = abs(t - k // 2) <= length - 1
    return support


# -- DepthwiseConvBranch ---------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_channel"])
@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
@pytest.mark.parametrize("length", AWKWARD_N)
def test_dwc_branch_is_a_1d_conv_with_the_middle_row(shared, num_prefix_tokens, length):
    branch = DepthwiseConvBranch(HEADS, 8, kernel_size=5, shared=shared)
    v = torch.randn(2, HEADS, num_prefix_tokens + length, 8, requires_grad=True)
    params = (branch.conv.weight, branch.conv.bias)

    out = branch(v, (1, length), num_prefix_tokens)
    ref = dwc_reference(branch, v, num_prefix_tokens)
    assert_close(out, ref, torch.float32)
    assert torch.equal(out[:, :num_prefix_tokens], torch.zeros_like(out[:, :num_prefix_tokens]))

    g_out, g_ref = grads(out, (v, *params)), grads(ref, (v, *params))
    for a, b in zip(g_out, g_ref, strict=True):
        assert_close(a, b, torch.float32)
    # Taps off the reachable part of the middle row meet only padding: exactly zero gradient.
    off = ~conv_tap_support(5, length)
    assert torch.equal(g_out[1][:, 0][:, off], torch.zeros_like(g_out[1][:, 0][:, off]))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_channel"])
def test_dwc_branch_gradcheck_float64(shared):
    branch = DepthwiseConvBranch(2, 2, kernel_size=3, shared=shared).double()
    v = torch.randn(1, 2, 1 + 5, 2, dtype=torch.float64, requires_grad=True)
    weight = branch.conv.weight.detach().clone().requires_grad_(True)
    bias = branch.conv.bias.detach().clone().requires_grad_(True)

    def f(v, weight, bias):
        return torch.func.functional_call(branch, {"conv.weight": weight, "conv.bias": bias}, (v, (1, 5), 1))

    assert torch.autograd.gradcheck(f, (v, weight, bias))


# -- AxialRoPE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
@pytest.mark.parametrize("length", AWKWARD_N)
def test_axial_rope_is_1d_rope_on_the_column_half(num_prefix_tokens, length):
    D = 16
    rope = AxialRoPE(D).double()
    x = torch.randn(2, HEADS, num_prefix_tokens + length, 2 * D, dtype=torch.float64)  # 2D wide, as NaLa's φ
    out = rope(x, (1, length), num_prefix_tokens)
    assert_close(out, rope_reference(x, D, num_prefix_tokens), torch.float64)
    # The row angle is 0 on a height-1 grid: the first D/4 pairs (channels 0 … D/2 − 1 of each chunk)
    # and the prefix tokens come out bit-identical.
    for chunk in range(2):
        rows = slice(chunk * D, chunk * D + D // 2)
        assert torch.equal(out[..., rows], x[..., rows])
    assert torch.equal(out[:, :, :num_prefix_tokens], x[:, :, :num_prefix_tokens])
    if length > 1:  # the column half does rotate
        cols = slice(D // 2, D)
        assert not torch.allclose(out[:, :, num_prefix_tokens + 1 :, cols], x[:, :, num_prefix_tokens + 1 :, cols])


@pytest.mark.parametrize("length", AWKWARD_N)
def test_axial_rope_float32_within_the_angle_rounding(length):
    # fp32 rounds β = n·ω to fp32: |Δβ| ≤ ½ulp(β) ≤ β·2⁻²⁴ with β < L (ω ≤ 1); a rotated pair moves by at
    # most |Δβ|·‖(a, b)‖, plus a few ulp for cos/sin and the products.
    D = 16
    rope = AxialRoPE(D)
    x = torch.randn(2, HEADS, length, D)
    err = (rope(x, (1, length)) - rope_reference(x.double(), D, 0)).abs().max().item()
    pair_norm = x.double().unflatten(-1, (D // 2, 2)).norm(dim=-1).max().item()
    bound = (length * 2.0**-24 + 8 * 2.0**-24) * pair_norm
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


def test_axial_rope_gradcheck_float64():
    rope = AxialRoPE(8).double()
    x = torch.randn(1, 2, 1 + 6, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rope(t, (1, 6), 1), (x,))


# -- LearnedPositionEmbedding ----------------------------------------------------------------------


@pytest.mark.parametrize("length", AWKWARD_N)
@pytest.mark.parametrize("construction", [(14, 14), (1, 64), (1, 197)], ids=["square", "seq64", "seq197"])
def test_position_table_on_a_sequence_is_a_1d_bicubic_resize(construction, length):
    pe = perturb_(LearnedPositionEmbedding(DIM, construction), scale=1.0)
    out = pe((1, length), 1)
    ref = pos_embed_reference(pe, length, 1)
    assert out.shape == (1, 1 + length, DIM)
    assert_close(out, ref, torch.float32)
    if construction == (1, length):  # the construction grid is used as is
        assert torch.equal(out[0, 1:], pe.weight[0])

    # Gradient: the reference is linear in the table, so its transpose gives the same gradient; entries
    # whose resize weight is 0 get exactly 0 (a (14, 14) table at height 1 blends rows 5 … 8 only).
    (g,) = grads(out, (pe.weight,))
    (g_ref,) = grads(ref, (pe.weight,))
    assert_close(g, g_ref, torch.float32)
    Hp, Wp = construction
    used = (cubic_resize_matrix(Hp, 1)[0, :, None] != 0) & (cubic_resize_matrix(Wp, length).abs().sum(0) != 0)[None]
    unused = ~used.flatten()
    assert torch.equal(g[0, unused], torch.zeros_like(g[0, unused]))
    if construction == (14, 14):
        assert used.any(1).nonzero().flatten().tolist() == [5, 6, 7, 8]


# -- L²ViT block parts: LCM and CPE ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("length", AWKWARD_N)
def test_lcm_is_1d_conv_gelu_batchnorm_conv(training, length):
    # Training mode runs in fp64: BatchNorm's batch mean nearly cancels the gradient of conv1's bias,
    # a small difference of large terms whose fp32 error reaches 5e-5 relative in the library and in the
    # reference alike (measured against fp64), which says nothing about the 1-D form.
    dtype = torch.float64 if training else torch.float32
    lcm = perturb_(LocalConcentrationModule(16, kernel_size=7)).train(training).to(dtype)
    with torch.no_grad():
        lcm.bn.running_mean.normal_()
        lcm.bn.running_var.uniform_(0.5, 2.0)
    running = (lcm.bn.running_mean.clone(), lcm.bn.running_var.clone())
    x = torch.randn(2, length, 16, dtype=dtype, requires_grad=True)
    params = (lcm.conv1.weight, lcm.conv1.bias, lcm.bn.weight, lcm.bn.bias, lcm.conv2.weight, lcm.conv2.bias)

    out = lcm(x, hw=(1, length))
    y = shift_conv1d(x.transpose(1, 2), middle_row(lcm.conv1), lcm.conv1.bias)
    y = batch_norm_reference(gelu_reference(y), lcm.bn, *running)
    ref = shift_conv1d(y, middle_row(lcm.conv2), lcm.conv2.bias).transpose(1, 2)
    assert_close(out, ref, dtype)
    assert_close(lcm.bn.running_mean, running[0], dtype)
    assert_close(lcm.bn.running_var, running[1], dtype)

    g_out, g_ref = grads(out, (x, *params)), grads(ref, (x, *params))
    for a, b in zip(g_out, g_ref, strict=True):
        assert_close(a, b, dtype)
    off = ~conv_tap_support(7, length)
    for g in (g_out[1], g_out[5]):  # conv1.weight, conv2.weight
        assert torch.equal(g[:, 0][:, off], torch.zeros_like(g[:, 0][:, off]))


@pytest.mark.parametrize("act", [False, True], ids=["no_act", "gelu"])
@pytest.mark.parametrize("length", AWKWARD_N)
def test_cpe_is_x_plus_1d_conv(act, length):
    cpe = perturb_(ConvPositionEncoding(16, kernel_size=3, act=act))
    x = torch.randn(2, length, 16, requires_grad=True)
    params = (cpe.proj.weight, cpe.proj.bias)
    out = cpe(x, hw=(1, length))
    conv = shift_conv1d(x.transpose(1, 2), middle_row(cpe.proj), cpe.proj.bias).transpose(1, 2)
    ref = x + (gelu_reference(conv) if act else conv)
    assert_close(out, ref, torch.float32)
    for a, b in zip(grads(out, (x, *params)), grads(ref, (x, *params)), strict=True):
        assert_close(a, b, torch.float32)
    # The token-layout and the feature-map-layout calls agree on a height-1 map.
    img = x.detach().transpose(1, 2).unsqueeze(2)
    assert_close(cpe(img).squeeze(2).transpose(1, 2), out, torch.float32)


def test_cpe_gradcheck_float64():
    cpe = perturb_(ConvPositionEncoding(3, kernel_size=3)).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cpe(t, hw=(1, 5)), (x,))


# -- LocalWindowAttention --------------------------------------------------------------------------


@pytest.mark.parametrize("window_size", [7, 4])
@pytest.mark.parametrize("length", AWKWARD_N)
def test_window_attention_masks_the_padding_into_1xw_windows(window_size, length):
    # Default: the (1, L) grid is padded to w rows and a multiple of w columns; every padded key is
    # masked, so each token attends to the ≤ w real tokens of its 1×w window.
    layer = perturb_(LocalWindowAttention(DIM, HEADS, window_size=window_size))
    x = torch.randn(2, length, DIM, requires_grad=True)
    params = tuple(layer.parameters())
    out = layer(x, hw=(1, length))
    ref = window_reference(layer, x)
    assert_close(out, ref, torch.float32)
    for a, b in zip(grads(out, (x, *params)), grads(ref, (x, *params)), strict=True):
        assert_close(a, b, torch.float32)


@pytest.mark.parametrize("length", [7, 197])
def test_window_attention_with_a_key_padding_mask(length):
    layer = perturb_(LocalWindowAttention(DIM, HEADS, window_size=7))
    x = torch.randn(2, length, DIM)
    mask = torch.rand(2, length) > 0.3
    mask[:, 0] = True
    mask[1, -10:] = False  # whole masked windows at the end of sample 1
    assert not mask.all() and mask.any()
    with torch.no_grad():
        out = layer(x, hw=(1, length), key_padding_mask=mask)
        ref = window_reference(layer, x, mask)
    assert torch.isfinite(out).all()
    # Masked queries have no defined output; every window here holds a kept token in sample 0.
    assert_close(out[mask], ref[mask], torch.float32)


@pytest.mark.parametrize("length", [1, 7, 197])
def test_window_attention_compat_attends_to_the_padded_rows(length):
    # l2vit_compat=True (official LWABlock): on a height-1 grid each window is w×w with w·(w − 1) zero
    # rows, plus right padding; those zero tokens are keys/values with the qkv bias. So a 1-D token
    # shares its window's softmax with ≥ 42 padding keys at w = 7: not a 1-D window attention.
    layer = perturb_(LocalWindowAttention(DIM, HEADS, window_size=7, l2vit_compat=True))
    x = torch.randn(2, length, DIM)
    with torch.no_grad():
        out = layer(x, hw=(1, length))
        assert_close(out, window_reference(layer, x), torch.float32)
        layer.l2vit_compat = False
        assert rel_err(out, window_reference(layer, x)) > 1e-2


# -- SpatialReductionAttention ---------------------------------------------------------------------


def test_spatial_reduction_refuses_a_height_1_grid():
    layer = SpatialReductionAttention(DIM, HEADS, sr_ratio=2)
    with pytest.raises(ValueError, match="smaller than sr_ratio"):
        layer(torch.randn(1, 197, DIM), hw=(1, 197))
    # sr_ratio=1 does not use the grid: plain softmax attention over the sequence.
    plain = SpatialReductionAttention(DIM, HEADS, sr_ratio=1)
    assert torch.isfinite(plain(torch.randn(1, 197, DIM), hw=(1, 197))).all()


# -- every registered attention on a sequence ------------------------------------------------------


@pytest.mark.parametrize("length", [1, 197])
@pytest.mark.parametrize("name", mirrorla.list_attentions())
def test_registry_forward_backward_on_a_sequence(name, length):
    layer = create_attention(name, DIM, HEADS)
    x = torch.randn(2, length, DIM, requires_grad=True)
    out = layer(x, hw=(1, length))
    assert out.shape == x.shape and torch.isfinite(out).all()
    params = dict(layer.named_parameters())
    g_x, *g_params = grads(out, (x, *params.values()))
    assert torch.isfinite(g_x).all() and g_x.abs().sum() > 0
    g = dict(zip(params, g_params, strict=True))
    missing = [n for n, t in g.items() if t is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(t).all() for t in g.values())

    # Grid parts: on a height-1 grid a k×k kernel is reached only on its middle row (and only at
    # offsets |t| ≤ L − 1); a (Hp, Wp) key table only where the bicubic resize to (1, L) weighs it.
    for mod_name, mod in layer.named_modules():
        if isinstance(mod, nn.Conv2d):
            w = g[f"{mod_name}.weight"][:, 0]
            support = conv_tap_support(mod.kernel_size[0], length)
            assert torch.equal(w[:, ~support], torch.zeros_like(w[:, ~support])), mod_name
            assert (w[:, support] != 0).all(), mod_name
        if isinstance(mod, LearnedPositionEmbedding):
            Hp, Wp = mod.grid
            rows, cols = cubic_resize_matrix(Hp, 1)[0], cubic_resize_matrix(Wp, length)
            used = ((rows[:, None] != 0) & (cols.abs().sum(0) != 0)[None]).flatten()
            pe_grad = g[f"{mod_name}.weight"][0]
            assert torch.equal(pe_grad[~used], torch.zeros_like(pe_grad[~used]))
            assert pe_grad[used].abs().sum() > 0
    # With one token, normalised attention of one key is ≈ v whatever q is, so some parameters
    # (q rows, the key bias) legitimately get zero gradients; with 197 tokens every one takes part.
    if length > 1:
        dead = [n for n, t in g.items() if not (t != 0).any()]
        assert not dead, f"parameters with an all-zero gradient: {dead}"


# -- layers with every grid part swapped for its 1-D reference ------------------------------------

LAYER_CASES = [(1, 0), (7, 1), (197, 0), (197, 1), (1000, 0)]  # (L, num_prefix_tokens)


def swap_in_references(monkeypatch, layer, length, num_prefix_tokens):
    """Replace the forward of every grid part of ``layer`` by its 1-D reference; returns the names called."""
    called = []

    def expect_grid(grid, P, part):
        assert tuple(grid) == (1, length) and P == num_prefix_tokens
        called.append(part)

    if getattr(layer, "dwc", None) is not None:

        def dwc(v, grid, P, branch=layer.dwc):
            expect_grid(grid, P, "dwc")
            return dwc_reference(branch, v, P)

        monkeypatch.setattr(layer.dwc, "forward", dwc)
    if getattr(layer, "pos_embed", None) is not None:

        def pos_embed(grid, P=0, pe=layer.pos_embed):
            expect_grid(grid, P, "pos_embed")
            return pos_embed_reference(pe, length, P)

        monkeypatch.setattr(layer.pos_embed, "forward", pos_embed)
    if getattr(layer, "rope", None) is not None:
        # The layer builds the tables once per call (for q and k), then rotates: the tables stand for
        # their grid here, and the rotation is the 1-D reference.
        def tables(grid, P, dtype):
            expect_grid(grid, P, "rope")
            return grid, P

        def rotate(x, grid, P, head_dim=layer.rope.head_dim):
            return rope_reference(x, head_dim, P)

        monkeypatch.setattr(layer.rope, "tables", tables)
        monkeypatch.setattr(layer.rope, "rotate", rotate)
    return called


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("length", "num_prefix_tokens"), LAYER_CASES)
@pytest.mark.parametrize(
    ("name", "parts"),
    [
        pytest.param("flatten", {"dwc", "pos_embed"}, id="flatten"),
        pytest.param("pola", {"dwc", "pos_embed"}, id="pola"),
        pytest.param("mirror_dwc", {"dwc"}, id="mirror_dwc"),
        pytest.param("nala", {"dwc", "rope"}, id="nala"),
        pytest.param("nala_cos", {"dwc", "rope"}, id="nala_cos"),
    ],
)
def test_layer_on_a_sequence_equals_its_1d_parts(monkeypatch, name, parts, length, num_prefix_tokens, dtype):
    layer = perturb_(create_attention(name, DIM, HEADS, num_prefix_tokens=num_prefix_tokens)).to(dtype)
    x = torch.randn(2, num_prefix_tokens + length, DIM, dtype=dtype, requires_grad=True)
    params = tuple(layer.parameters())
    out = layer(x, hw=(1, length))
    g_out = grads(out, (x, *params))

    called = swap_in_references(monkeypatch, layer, length, num_prefix_tokens)
    ref = layer(x, hw=(1, length))
    assert set(called) == parts, f"grid parts used: {sorted(set(called))}, expected {sorted(parts)}"
    g_ref = grads(ref, (x, *params))
    tol = FP64_TOL if dtype == torch.float64 else FP32_TOL
    assert rel_err(out, ref) <= tol
    for p, a, b in zip(("x", *(n for n, _ in layer.named_parameters())), g_out, g_ref, strict=True):
        assert (a is None) == (b is None), p
        if a is not None:
            # RMS error over the larger of the gradient's own RMS and the mean |∂/∂x|: at L = 1 some
            # gradients (q rows, the focusing scale, the table) are ≈ 0 up to rounding and have no
            # relative error to speak of.
            floor = max(b.double().pow(2).mean().sqrt(), g_ref[0].double().abs().mean())
            err = (a - b).double().pow(2).mean().sqrt() / floor
            assert err <= tol, f"{p}: gradient error {float(err):.3g} > {tol:g}"


# -- key padding on a sequence ---------------------------------------------------------------------

# On hw=(1, N) a right-padding mask (the last tokens dropped) equals truncation when no part at a kept
# position sees the dropped tokens or the padded length: the DWC sees masked values, which the layer
# zeroes before the conv (= the zero padding of the truncated sequence); RoPE angles depend on the
# position from the start; LWA windows start at 0 either way and masked keys are excluded; variance
# modulation counts kept tokens only. The key position table fails: it is resized to the padded length
# N, not the kept length.
TRUNCATION_CASES = [
    # Agent attention lays its agent bins and bias tables over the padded grid (tests/test_peers_new.py).
    *(pytest.param(n, {}, id=n) for n in mirrorla.list_attentions() if n not in ("flatten", "pola", "agent")),
    pytest.param("flatten", {"key_pos_grid": None}, id="flatten-no_table"),
    pytest.param("pola", {"key_pos_grid": None}, id="pola-no_table"),
]


def _truncation_error(layer, length, kept, left=False):
    """Largest relative RMS error, over the samples, between the kept outputs of a padded run (the first
    kept[b] tokens kept, or the last ones with ``left``) and a run on the kept tokens alone."""
    x = torch.randn(len(kept), length, DIM)
    pos = torch.arange(length)[None]
    kept_t = torch.tensor(kept)[:, None]
    mask = pos >= length - kept_t if left else pos < kept_t
    assert mask.any(1).all() and not mask.all()
    with torch.no_grad():
        full = layer(x, hw=(1, length), key_padding_mask=mask)
        errs = [
            rel_err(full[b : b + 1][:, mask[b]], layer(x[b : b + 1][:, mask[b]], hw=(1, n))) for b, n in enumerate(kept)
        ]
    return max(errs)


@pytest.mark.parametrize("length", [7, 197])
@pytest.mark.parametrize(("name", "kwargs"), TRUNCATION_CASES)
def test_right_padding_mask_equals_truncation(name, kwargs, length):
    layer = perturb_(create_attention(name, DIM, HEADS, **kwargs))
    kept = [length - 3, max(length // 2, 1)]  # ragged: a different kept length per sample
    assert _truncation_error(layer, length, kept) <= FP32_TOL


@pytest.mark.parametrize(("name", "kwargs"), [c for c in TRUNCATION_CASES if c.id != "window_softmax"])
def test_left_padding_mask_equals_truncation(name, kwargs):
    # Left padding too, except for window attention (its windows are counted from the padded start):
    # the DWC again sees zeros, and RoPE enters only through R(β_j − β_i), unchanged by an offset.
    layer = perturb_(create_attention(name, DIM, HEADS, **kwargs))
    assert _truncation_error(layer, 197, [194, 98], left=True) <= FP32_TOL


def test_left_padding_mask_shifts_the_windows():
    layer = perturb_(create_attention("window_softmax", DIM, HEADS))
    assert _truncation_error(layer, 197, [194, 98], left=True) > 1e-3


@pytest.mark.parametrize("name", ["flatten", "pola"])
def test_padding_mask_with_a_key_table_depends_on_the_padded_length(name):
    # Why flatten and pola are tested without the table above: P is resized to (1, N), so a kept token
    # gets a different key embedding in the padded run (N = 197) than in the truncated one.
    layer = perturb_(create_attention(name, DIM, HEADS))
    assert _truncation_error(layer, 197, [150, 120]) > 1e-3
