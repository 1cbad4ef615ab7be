"""MirrorLA invariants (docs/methods.md §2.9, tests 1–12)."""

import itertools
import math

import pytest
import torch
from helpers import AllocationTracker, rel_err

from mirrorla import create_attention
from mirrorla.feature_maps import MirrorFeatureMap
from mirrorla.layers import MirrorLinearAttention
from mirrorla.ops import block_reflect, block_variance, cross_head_reflect, modulated_angle
from mirrorla.ops.naive import dense_block_reflection, dense_cross_head_reflection, naive_linear_attention

SWITCHES = [
    dict(block_reflection=b, variance_modulation=v, cross_head=c)
    for b, v, c in itertools.product([False, True], repeat=3)
    if not (v and not b)
]


def qk(B=2, H=3, N=11, D=8, dtype=torch.float64, M=None):
    return torch.randn(B, H, N, D, dtype=dtype), torch.randn(B, H, N if M is None else M, D, dtype=dtype)


# -- test 1: the block reflection -----------------------------------------------------------
def test_block_reflection_matrix_properties():
    D = 8
    angle = torch.rand(3, D // 2, dtype=torch.float64) * 2 * math.pi
    Hm = dense_block_reflection(angle, D)  # (3, D, D)
    eye = torch.eye(D, dtype=torch.float64)
    assert torch.allclose(Hm, Hm.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(Hm @ Hm.transpose(-1, -2), eye.expand_as(Hm), atol=1e-12)
    assert torch.allclose(Hm @ Hm, eye.expand_as(Hm), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Hm), torch.full((3,), (-1.0) ** (D // 2), dtype=torch.float64))
    assert torch.allclose(dense_block_reflection(angle + math.pi, D), Hm, atol=1e-12)  # π-periodic
    # fp32 tolerance stated in the spec
    H32 = dense_block_reflection(angle.float(), D)
    assert torch.allclose(H32 @ H32.transpose(-1, -2), torch.eye(D).expand_as(H32), atol=1e-6)


def test_block_reflect_closed_form_equals_dense_matmul():
    B, H, N, D = 2, 3, 7, 10
    x = torch.randn(B, H, N, D, dtype=torch.float64)
    angle = torch.rand(B, H, D // 2, dtype=torch.float64) * math.pi
    dense = dense_block_reflection(angle, D)  # (B, H, D, D)
    ref = x @ dense.transpose(-1, -2)
    assert torch.allclose(block_reflect(x, angle), ref, atol=1e-12)
    # a known value: Θ = 0 → diag(-1, +1)
    y = block_reflect(torch.ones(1, 1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    assert y.flatten().tolist() == [-1.0, 1.0]


# -- test 2: the cross-head reflection --------------------------------------------------------
def test_cross_head_reflection_properties():
    C = 12
    u = torch.randn(C, dtype=torch.float64)
    Hc = dense_cross_head_reflection(u)
    u_hat = u / u.norm()
    eye = torch.eye(C, dtype=torch.float64)
    assert torch.allclose(Hc, Hc.T, atol=1e-12)
    assert torch.allclose(Hc @ Hc.T, eye, atol=1e-12)
    assert torch.allclose(Hc @ Hc, eye, atol=1e-12)
    assert torch.allclose(Hc @ u_hat, -u_hat, atol=1e-12)
    w = torch.randn(C, dtype=torch.float64)
    w = w - (w @ u_hat) * u_hat
    assert torch.allclose(Hc @ w, w, atol=1e-12)
    assert abs(torch.linalg.det(Hc).item() + 1.0) < 1e-10
    # the O(N·C) form on (B, H, N, D) equals the dense C×C matrix on (B, N, C)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    flat = x.transpose(1, 2).reshape(2, 5, C)
    ref = (flat @ Hc.T).view(2, 5, 3, 4).transpose(1, 2)
    assert torch.allclose(cross_head_reflect(x, u), ref, atol=1e-12)


# -- test 3: inner products and norms are preserved before the ReLU ---------------------------
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(k for k, v in s.items() if v) or "off")
def test_inner_products_preserved(switches):
    H, D = 3, 8
    fm = MirrorFeatureMap(H, D, **switches).double()
    with torch.no_grad():
        if hasattr(fm, "alpha"):
            fm.alpha.uniform_(-2, 2)
    q, k = qk(H=H, D=D, M=9)
    rq, rk = fm.reflect(q, k)
    full_before = torch.einsum("bhnd,bhmd->bnm", q, k)
    full_after = torch.einsum("bhnd,bhmd->bnm", rq, rk)
    assert torch.allclose(full_after, full_before, atol=1e-10)
    assert torch.allclose(rq.pow(2).sum((1, 3)), q.pow(2).sum((1, 3)), atol=1e-10)  # token norms, full width
    if not switches["cross_head"]:
        assert torch.allclose(rq @ rk.transpose(-1, -2), q @ k.transpose(-1, -2), atol=1e-10)
    if switches["block_reflection"] or switches["cross_head"]:
        assert not torch.allclose(rq, q)  # the reflections really act


# -- test 4: q and k share Θ; a q-only variance breaks the invariant --------------------------
def test_shared_angle_and_negative_control():
    H, D = 2, 6
    fm = MirrorFeatureMap(H, D, cross_head=False).double()
    q, k = qk(H=H, D=D)
    k = 3.0 * k  # q and k of very different variance
    angle = fm.angles(q, k)
    assert angle.shape == (2, H, D // 2)
    rq, rk = fm.reflect(q, k)
    assert torch.allclose(rq, block_reflect(q, angle)) and torch.allclose(rk, block_reflect(k, angle))
    # negative control: separate variances for q and k → inner products change
    angle_q = modulated_angle(fm.theta, fm.alpha, block_variance(q, q))
    angle_k = modulated_angle(fm.theta, fm.alpha, block_variance(k, k))
    bad = block_reflect(q, angle_q) @ block_reflect(k, angle_k).transpose(-1, -2)
    assert not torch.allclose(bad, q @ k.transpose(-1, -2), atol=1e-3)


def test_block_variance_definition():
    q, k = qk(B=2, H=2, N=6, D=4, M=5)
    var = block_variance(q, k)
    for b, h, j in itertools.product(range(2), range(2), range(2)):
        vals = torch.cat([q[b, h, :, 2 * j : 2 * j + 2].flatten(), k[b, h, :, 2 * j : 2 * j + 2].flatten()])
        assert torch.allclose(var[b, h, j], vals.var(correction=0))
    # masked tokens are removed from both sets
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    qs, ks = qk(B=2, H=2, N=6, D=4)
    var_m = block_variance(qs, ks, mask)
    assert torch.allclose(var_m[0], block_variance(qs[:1, :, :4], ks[:1, :, :4])[0])
    assert torch.allclose(var_m[1], block_variance(qs[1:], ks[1:])[0])


# -- test 5 and 6: non-negativity, oracle, baseline and folding -------------------------------
def test_features_nonnegative_and_layer_matches_oracle():
    layer = create_attention("mirror", 32, num_heads=4).double()
    x = torch.randn(2, 25, 32, dtype=torch.float64)
    q, k, v, _ = layer.project(x)
    pq, pk = layer.feature_map(q, k)
    assert (pq >= 0).all() and (pk >= 0).all()
    assert (pq > 0).any() and (pq == 0).any()  # the ReLU really truncates
    o = naive_linear_attention(pq, pk, v)
    ref = layer.proj(layer.merge_heads(o))
    assert rel_err(layer(x), ref) < 1e-10


def test_all_switches_off_equals_relu_linear_attention():
    torch.manual_seed(1)
    off = MirrorLinearAttention(32, 4, block_reflection=False, variance_modulation=False, cross_head=False)
    relu = create_attention("linear_relu", 32, num_heads=4)
    relu.load_state_dict(off.state_dict())
    x = torch.randn(2, 30, 32)
    assert torch.equal(off(x), relu(x))


@pytest.mark.parametrize("name", ["mirror_block", "mirror_cross"])
def test_fold_reflections_keeps_outputs(name):
    layer = create_attention(name, 48, num_heads=4, block_reflection=True, cross_head=True).double().eval()
    x = torch.randn(2, 20, 48, dtype=torch.float64)
    before = layer(x)
    layer.fold_reflections()
    assert rel_err(layer(x), before) < 1e-10
    with pytest.raises(ValueError, match="already folded"):
        layer.fold_reflections()
    with pytest.raises(ValueError, match="nothing to fold"):
        create_attention("mirror", 48, num_heads=4).fold_reflections()


# -- test 7: the modulation range, detach_variance ----------------------------------------------
def test_modulation_range_and_sensitivity():
    theta = torch.zeros(1, 4, dtype=torch.float64)
    alpha = torch.full((1, 4), 0.7, dtype=torch.float64)
    var = torch.tensor([[[0.0, 0.5, 2.0, 1e6]]], dtype=torch.float64)
    delta = modulated_angle(theta, alpha, var)
    assert ((delta > 0.35) & (delta <= 0.7)).all()
    assert torch.all(delta[..., :-1] > delta[..., 1:])  # lower variance → turned further
    assert (
        abs(delta[0, 0, 1].item() - 0.7 * torch.sigmoid(torch.tensor(1 / (0.5 + 1e-6), dtype=torch.float64)).item())
        < 1e-9
    )


def test_detach_variance_changes_gradients_not_forward():
    torch.manual_seed(3)
    a = MirrorLinearAttention(16, 2).double()
    b = MirrorLinearAttention(16, 2, detach_variance=True).double()
    b.load_state_dict(a.state_dict())
    # inputs ×10: q, k variances ≈ 0.5, where sigmoid(1/σ²) is sensitive (§2.4 analysis)
    x = 10 * torch.randn(2, 9, 16, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = a(xa), b(xb)
    assert torch.equal(ya, yb)
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    assert not torch.allclose(xa.grad, xb.grad)


# -- test 8: no cross-sample leakage --------------------------------------------------------------
def test_batch_permutation_equivariance():
    layer = create_attention("mirror", 32, num_heads=4)
    x = torch.randn(4, 16, 32)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(layer(x)[perm], layer(x[perm]), atol=1e-6)


class _Reflect(torch.nn.Module):
    def __init__(self, fm):
        super().__init__()
        self.fm = fm

    def forward(self, q, k):
        return self.fm.reflect(q, k)


# -- test 9: gradcheck through σ², θ, α, u_c ------------------------------------------------------
def test_gradcheck_feature_map_parameters():
    fm = MirrorFeatureMap(2, 4).double()
    q, k = qk(B=2, H=2, N=5, D=4)
    params = (fm.u_c, fm.theta, fm.alpha)

    def f(qq, kk, u, th, al):
        # reflect() before the ReLU is smooth everywhere, so gradcheck is well defined
        params = {"fm.u_c": u, "fm.theta": th, "fm.alpha": al}
        return torch.func.functional_call(_Reflect(fm), params, (qq, kk))

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (q, k, *params))
    assert torch.autograd.gradcheck(f, inputs)


def test_gradcheck_mirror_layer():
    layer = MirrorLinearAttention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# -- test 10: O(N) --------------------------------------------------------------------------------
def test_mirror_layer_builds_no_n_by_n_tensor():
    layer = create_attention("mirror", 64, num_heads=2)
    x = torch.randn(1, 4096, 64)
    with torch.no_grad(), AllocationTracker() as tr:
        layer(x)
    assert tr.max_numel < 4096 * 4096


# -- test 12: causal ------------------------------------------------------------------------------
def test_causal_with_modulation_raises_and_without_matches_reference():
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="leak future tokens"):
        create_attention("mirror", 32, num_heads=4)(x, is_causal=True)
    layer = create_attention("mirror", 32, num_heads=4, variance_modulation=False, chunk_size=16).double()
    q, k, v, _ = layer.project(x)
    pq, pk = layer.feature_map(q, k)
    ref = layer.proj(layer.merge_heads(naive_linear_attention(pq, pk, v, causal=True)))
    assert rel_err(layer(x, is_causal=True), ref) < 1e-10


def test_key_padding_mask_equals_truncated_sequence():
    layer = create_attention("mirror", 32, num_heads=4)
    x = torch.randn(1, 40, 32)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[:, :31] = True
    padded = layer(x, key_padding_mask=mask)
    assert rel_err(padded[:, :31], layer(x[:, :31])) < 1e-5
    assert torch.isfinite(padded).all()


def test_mirror_errors():
    with pytest.raises(ValueError, match="even head dim"):
        create_attention("mirror", 30, num_heads=6)
    with pytest.raises(ValueError, match="needs block_reflection=True"):
        create_attention("mirror", 32, num_heads=4, block_reflection=False)
    with pytest.raises(ValueError, match="theta_init"):
        create_attention("mirror", 32, num_heads=4, theta_init="gauss")
    with pytest.raises(TypeError, match="feature_map='mirror'"):
        MirrorLinearAttention(32, 4, feature_map="relu")
    with pytest.raises(TypeError, match="renamed; use dwc_kernel"):
        create_attention("mirror", 32, num_heads=4, kernel_size=3)
    for removed in ("core_dtype", "compile"):
        with pytest.raises(TypeError, match=f"option '{removed}' was removed"):
            create_attention("mirror", 32, num_heads=4, **{removed: "bfloat16"})
        with pytest.raises(TypeError, match=f"option '{removed}' was removed"):
            create_attention("nala", 32, num_heads=2, **{removed: "bfloat16"})
    # odd head dim is fine when no block reflection is used
    create_attention("mirror_cross", 30, num_heads=6)(torch.randn(1, 4, 30))


def test_parameters_and_init():
    layer = create_attention("mirror", 64, num_heads=4)
    fm = layer.feature_map
    assert fm.u_c.shape == (64,) and fm.theta.shape == (4, 8) and fm.alpha.shape == (4, 8)
    assert torch.allclose(fm.alpha, torch.full((4, 8), 0.1 * math.pi))
    assert (fm.theta >= 0).all() and (fm.theta < math.pi).all()
    assert layer.no_weight_decay() == {"feature_map.u_c", "feature_map.theta", "feature_map.alpha"}
    relu = create_attention("linear_relu", 64, num_heads=4)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(layer) - n(relu) == 64 + 2 * 32  # u_c (C) + θ and α (C/2 each) = 2C
