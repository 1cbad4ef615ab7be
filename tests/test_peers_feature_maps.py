"""Feature maps and parts of the peer methods: FLatten focus, PolaFormer polarity, NaLaFormer maps, RoPE, P."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from mirrorla.feature_maps import FocusedFeatureMap, NormAwareFeatureMap, PolarityFeatureMap
from mirrorla.feature_maps.focused import focus
from mirrorla.feature_maps.polarity import swap_polarity
from mirrorla.layers.nala import AxialRoPE
from mirrorla.layers.parts import LearnedPositionEmbedding


def qk(B=2, H=2, N=9, D=8, scale=1.0, dtype=torch.float64):
    return torch.randn(B, H, N, D, dtype=dtype) * scale, torch.randn(B, H, N, D, dtype=dtype) * scale


# -- FLatten ----------------------------------------------------------------------------------
def direct_focus(x, p, dims):
    return x.norm(dim=dims, keepdim=True) * x**p / (x**p).norm(dim=dims, keepdim=True)


@pytest.mark.parametrize("dims", [(1, 3), (3,)])
def test_focus_equals_direct_formula(dims):
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64) + 1e-3
    assert torch.allclose(focus(x, 3.0, dims), direct_focus(x, 3.0, dims), rtol=1e-12)


def test_focus_is_stable_where_the_direct_formula_is_not():
    # x = 1e-6 / softplus(s) with a large learned s: the direct formula's ‖x³‖ underflows to 0 in
    # fp32 (1e-24² = 1e-48 < 1e-45) and gives inf/NaN; the rescaled evaluation stays exact.
    x = torch.full((1, 2, 3, 4), 1e-8) * (1 + torch.rand(1, 2, 3, 4))
    assert not torch.isfinite(direct_focus(x, 3.0, (1, 3))).all()
    y = focus(x, 3.0, (1, 3))
    assert torch.isfinite(y).all()
    assert rel_err(y, direct_focus(x.double(), 3.0, (1, 3))) < 1e-6


def test_focused_map_keeps_the_norm_and_sharpens():
    fm = FocusedFeatureMap(2, 4).double()
    q, k = qk(D=4)
    phi_q, _ = fm(q, k)
    q1 = (F.relu(q) + 1e-6) / math.log(2)
    assert torch.allclose(phi_q.norm(dim=(1, 3)), q1.norm(dim=(1, 3)))  # ‖φ(x)‖ = ‖x‖
    # Focusing: the largest entry's share of the norm grows (p = 3 > 1).
    assert (phi_q.amax(dim=(1, 3)) / phi_q.norm(dim=(1, 3)) >= q1.amax(dim=(1, 3)) / q1.norm(dim=(1, 3)) - 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_focused_map_half_inputs_are_evaluated_in_fp32(dtype):
    fm = FocusedFeatureMap(2, 4)
    q, k = qk(D=4, dtype=dtype)
    phi_q, phi_k = fm(q * 1e-3, k * 1e-3)
    assert phi_q.dtype == torch.float32 and torch.isfinite(phi_q).all() and torch.isfinite(phi_k).all()


def test_focused_map_gradcheck_including_scale():
    fm = FocusedFeatureMap(2, 3).double()
    q, k = qk(D=3, N=4)
    s = torch.randn(1, 1, 6, dtype=torch.float64)

    def f(q, k, s):
        return torch.func.functional_call(fm, {"scale": s}, (q, k))

    assert torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), s.requires_grad_()))


# -- PolaFormer -------------------------------------------------------------------------------
def test_polarity_scores_are_same_and_opposite_sign_sums():
    fm = PolarityFeatureMap(2, 4).double()
    with torch.no_grad():
        fm.power.normal_()
        fm.scale.normal_()
    q, k = qk(D=4)
    phi_q, phi_k = fm(q, k)
    s = F.softplus(fm.scale).view(1, 2, 1, 4)
    p = 1 + 4 * torch.sigmoid(fm.power)
    qs, ks = q / s, k / s
    same = torch.einsum("bhnd,bhmd->bhnm", F.relu(qs) ** p, F.relu(ks) ** p) + torch.einsum(
        "bhnd,bhmd->bhnm", F.relu(-qs) ** p, F.relu(-ks) ** p
    )
    opp = torch.einsum("bhnd,bhmd->bhnm", F.relu(-qs) ** p, F.relu(ks) ** p) + torch.einsum(
        "bhnd,bhmd->bhnm", F.relu(qs) ** p, F.relu(-ks) ** p
    )
    assert torch.allclose(phi_q @ phi_k.transpose(-1, -2), same)
    assert torch.allclose(swap_polarity(phi_q) @ phi_k.transpose(-1, -2), opp)
    assert fm.feature_dim(4) == 8


def test_polarity_exponent_range():
    fm = PolarityFeatureMap(1, 3)
    with torch.no_grad():
        fm.power.copy_(torch.tensor([-50.0, 0.0, 50.0]).view(1, 1, 1, 3))
    p = fm.exponent().flatten()
    assert torch.allclose(p, torch.tensor([1.0, 3.0, 5.0]), atol=1e-6)


def test_polarity_map_gradcheck_including_scale_and_power():
    fm = PolarityFeatureMap(2, 3).double()
    q, k = qk(D=3, N=4)
    s = torch.randn(1, 1, 6, dtype=torch.float64)
    w = torch.randn(1, 2, 1, 3, dtype=torch.float64)

    def f(q, k, s, w):
        return torch.func.functional_call(fm, {"scale": s, "power": w}, (q, k))

    args = (q.requires_grad_(), k.requires_grad_(), s.requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(f, args)


# -- NaLaFormer --------------------------------------------------------------------------------
def test_nala_code_form_power_range_and_same_sign_scores():
    fm = NormAwareFeatureMap(2, 8).double()
    for scale in (1e-3, 1.0, 1e3):
        q, k = qk(scale=scale)
        phi_q, phi_k = fm(q, k)
        r = q.norm(dim=-1, keepdim=True)
        p = 3 * (0.5 + torch.tanh(r))
        assert (p >= 1.5).all() and (p <= 4.5).all()  # [1.5, 4.5); tanh rounds to 1 for large r
        expected = torch.einsum("bhnd,bhmd->bhnm", (F.relu(q) / r) ** p, F.relu(k) ** 3) + torch.einsum(
            "bhnd,bhmd->bhnm", (F.relu(-q) / r) ** p, F.relu(-k) ** 3
        )
        assert rel_err(phi_q @ phi_k.transpose(-1, -2), expected) < 1e-12


def test_nala_query_norm_changes_the_attention_only_through_the_power():
    # Scaling q changes p(‖q‖) and so the normalised attention row (the paper's point); the
    # direction alone would cancel for a homogeneous map.
    fm = NormAwareFeatureMap(1, 8).double()
    q, k = qk(B=1, H=1)
    rows = []
    for c in (0.05, 5.0):
        phi_q, phi_k = fm(q * c, k)
        a = phi_q @ phi_k.transpose(-1, -2)
        rows.append(a / a.sum(-1, keepdim=True))
    assert rel_err(rows[0], rows[1]) > 1e-2


def test_nala_cosine_scores_nonnegative_and_code_limit():
    cos = NormAwareFeatureMap(2, 8, form="cosine").double()
    code = NormAwareFeatureMap(2, 8).double()
    for scale in (1e-2, 1.0, 30.0):
        q, k = qk(scale=scale)
        phi_q, phi_k = cos(q, k)
        scores = phi_q @ phi_k.transpose(-1, -2)
        assert (scores >= 0).all() and (phi_q < 0).any()  # features signed, scores not
    # a → ∞: cos Δθ → 1 (same sign) or 0 (opposite): the code form's scores (docs/methods.md §5.2).
    steep = NormAwareFeatureMap(2, 8, form="cosine", phase_scale=1e7).double()
    q, k = qk()
    a_cos = steep(q, k)
    a_code = code(q, k)
    assert rel_err(a_cos[0] @ a_cos[1].transpose(-1, -2), a_code[0] @ a_code[1].transpose(-1, -2)) < 1e-4


@pytest.mark.parametrize("form", ["code", "cosine"])
def test_nala_map_gradcheck_and_zero_query(form):
    fm = NormAwareFeatureMap(2, 4, form=form).double()
    q, k = qk(D=4, N=4)
    assert torch.autograd.gradcheck(fm, (q.requires_grad_(), k.requires_grad_()))
    # [Design] r is clamped at 1e-6: a zero query gives finite features (the official code: NaN).
    zq = torch.zeros(1, 2, 3, 4, requires_grad=True)
    phi_q, _ = NormAwareFeatureMap(2, 4, form=form)(zq, torch.randn(1, 2, 3, 4))
    phi_q.sum().backward()
    assert torch.isfinite(phi_q).all() and torch.isfinite(zq.grad).all()


# -- RoPE ------------------------------------------------------------------------------------------
def test_rope_is_a_relative_rotation():
    d, hw = 8, (3, 5)
    rope = AxialRoPE(d).double()
    x = torch.randn(1, 1, 15, 2 * d, dtype=torch.float64)
    y = rope(x, hw)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # rotations preserve norms
    # ⟨R_i a, R_j b⟩ depends on positions only through their difference: shift both tokens by one row.
    a, b = torch.randn(2 * d, dtype=torch.float64), torch.randn(2 * d, dtype=torch.float64)
    t = torch.zeros(1, 1, 15, 2 * d, dtype=torch.float64)
    t[0, 0, 1], t[0, 0, 7] = a, b  # (0, 1) and (1, 2)
    u = torch.zeros_like(t)
    u[0, 0, 6], u[0, 0, 12] = a, b  # (1, 1) and (2, 2)
    rt, ru = rope(t, hw), rope(u, hw)
    assert torch.allclose(rt[0, 0, 1] @ rt[0, 0, 7], ru[0, 0, 6] @ ru[0, 0, 12])
    assert not torch.allclose(rt[0, 0, 1] @ rt[0, 0, 7], a @ b)  # and it does rotate


def test_rope_angles_follow_the_official_table():
    # Official RoPE: angle = 1/10000^linspace(0, 1, d/4), each repeated for the pair; the first d/2
    # channels take the row index, the last d/2 the column index; token (r, c) is row-major.
    d, (H, W) = 16, (3, 4)
    rope = AxialRoPE(d).double()
    beta = rope.angles((H, W), num_prefix_tokens=1)
    omega = 1.0 / 10000 ** torch.linspace(0, 1, d // 4, dtype=torch.float64)
    assert beta.shape == (1 + H * W, d // 2) and beta[0].abs().max() == 0
    r, c = 2, 3
    assert torch.allclose(beta[1 + r * W + c], torch.cat([r * omega, c * omega]).float().double(), atol=1e-6)


def test_rope_needs_head_dim_multiple_of_4():
    with pytest.raises(ValueError, match="head_dim % 4"):
        AxialRoPE(6)


# -- learned position table --------------------------------------------------------------------------
def test_position_table_resize():
    pe = LearnedPositionEmbedding(3, (4, 6))
    with torch.no_grad():
        pe.weight.normal_()
    assert pe((4, 6)) is pe.weight  # construction grid: used as is
    with torch.no_grad():
        pe.weight.fill_(0.7)
    out = pe((5, 9), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 45, 3)
    assert out[:, :2].abs().max() == 0
    assert torch.allclose(out[:, 2:], torch.full((1, 45, 3), 0.7), atol=1e-6)  # bicubic keeps constants


def test_polarity_split_matches_two_relu_powers():
    """The one-power form equals [ReLU(x)^p ; ReLU(−x)^p] bit for bit, with the same gradients (zeros included)."""
    from mirrorla.feature_maps.polarity import polarity_split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, 8, generator=g, dtype=torch.float64)
    x[0, 0, :3] = 0.0  # ReLU's kink: both halves 0, gradient 0
    x.requires_grad_(True)
    p = (1 + 4 * torch.rand(1, 3, 1, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = torch.cat([torch.relu(x) ** p, torch.relu(-x) ** p], dim=-1)
    out = polarity_split(x, p)
    assert torch.equal(out, ref)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (x, p), grad), torch.autograd.grad(ref, (x, p), grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
