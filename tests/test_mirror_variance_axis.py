"""MirrorLA's ``variance_axis`` option: σ² per (sample, head, block) ("block", default) or per (sample, head)."""

import pytest
import torch
from helpers import rel_err

from mirrorla import create_attention
from mirrorla.commands import UsageError
from mirrorla.commands.train import check_attention_options
from mirrorla.feature_maps import MirrorFeatureMap
from mirrorla.ops.reflections import block_variance, mirror_features
from mirrorla.ops.reflections.fused import _block_variance_fast
from mirrorla.ops.reflections.naive import naive_block_variance

# float64 throughout: the fast path and the reference differ only by summation order (~1e-15).
ATOL64 = 1e-10


def qk(B=2, H=3, N=11, D=8, M=None):
    # Channel-dependent scales and offsets: the block variances differ from each other and from the
    # head variance, and odd channels have a non-zero mean (a wrong sign fold of μ would show).
    scale = torch.linspace(0.4, 1.6, D, dtype=torch.float64)
    offset = torch.linspace(-0.5, 0.8, D, dtype=torch.float64)
    q = torch.randn(B, H, N, D, dtype=torch.float64) * scale + offset
    k = torch.randn(B, H, N if M is None else M, D, dtype=torch.float64) * scale - 0.5 * offset
    return q, k


def head_map(H, D, **kw):
    fm = MirrorFeatureMap(H, D, variance_axis="head", **kw).double()
    with torch.no_grad():
        fm.alpha.uniform_(-2.0, 2.0)  # a large α: Θ depends visibly on σ²
    return fm


def padding_mask(B, N):
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, N - 4 :] = False
    assert not mask.all() and mask.any()
    return mask


def hand_head_variance(q, k, mask=None):
    """torch.var (population) of every q and k entry of the head, kept tokens only: (B, H)."""
    B, H = q.shape[:2]
    out = torch.empty(B, H, dtype=torch.float64)
    for b in range(B):
        keep = slice(None) if mask is None else mask[b]
        for h in range(H):
            out[b, h] = torch.cat((q[b, h, keep].flatten(), k[b, h, keep].flatten())).var(correction=0)
    return out


# -- 1: the definition -------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
def test_head_variance_equals_hand_computation(masked):
    B, H, N, D = 2, 3, 9, 6
    q, k = qk(B, H, N, D)
    mask = padding_mask(B, N) if masked else None
    ref = hand_head_variance(q, k, mask)[..., None].expand(B, H, D // 2)
    assert torch.allclose(block_variance(q, k, mask, axis="head"), ref, atol=1e-12)
    assert torch.allclose(naive_block_variance(q, k, mask, axis="head"), ref, atol=1e-12)
    if masked:
        # the padded tokens really change σ², so excluding them is what is tested
        assert not torch.allclose(hand_head_variance(q, k)[0], hand_head_variance(q, k, mask)[0], atol=1e-3)
    else:
        assert torch.allclose(_block_variance_fast(q, k, None, "head"), ref, atol=1e-12)
        # pre-folded inputs S·x (odd channels negated): the statistics must still be those of x
        sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(D // 2)
        assert torch.allclose(_block_variance_fast(q * sign, k * sign, sign, "head"), ref, atol=1e-12)
        assert not torch.allclose(hand_head_variance(q * sign, k * sign), ref[..., 0], atol=1e-3)


def test_head_variance_of_the_feature_map_angles():
    fm = head_map(2, 4, cross_head=False)
    q, k = qk(B=2, H=2, N=7, D=4)
    var = hand_head_variance(q, k)[..., None]
    expected = fm.theta + fm.alpha * torch.sigmoid(1.0 / (var + fm.variance_eps))
    assert torch.allclose(fm.angles(q, k), expected, atol=1e-12)


# -- 2: fast path == reference ------------------------------------------------------------------
@pytest.mark.parametrize("cross_head", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_head_fast_path_equals_reference(cross_head, masked):
    B, H, N, D = 2, 3, 13, 8
    fm = head_map(H, D, cross_head=cross_head)
    q, k = qk(B, H, N, D)
    mask = padding_mask(B, N) if masked else None
    fm.fast_path = True
    fast = fm(q, k, mask)
    ref = fm.reference_features(q, k, mask)
    for a, b in zip(fast, ref, strict=True):
        assert torch.allclose(a, b, atol=ATOL64)
    # and the reference really uses the head variance (not the block one)
    block = MirrorFeatureMap(H, D, cross_head=cross_head).double()
    block.load_state_dict(fm.state_dict())
    assert not torch.allclose(block.reference_features(q, k, mask)[0], ref[0], atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_head_prefolded_features_equal_reference(masked):
    # The layer's fast path folds H_c and the odd-channel sign flip S into the projection; the op then
    # receives S·x and must compute the head variance of x.
    B, H, N, D = 2, 2, 10, 6
    fm = head_map(H, D, cross_head=False)
    q, k = qk(B, H, N, D)
    mask = padding_mask(B, N) if masked else None
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(D // 2)
    fm.fast_path = True
    folded = fm.prefolded_features(q * sign, k * sign, mask)
    ref = fm.reference_features(q, k, mask)
    for a, b in zip(folded, ref, strict=True):
        assert torch.allclose(a, b, atol=ATOL64)
    direct = mirror_features(
        q * sign, k * sign, None, fm.theta, fm.alpha, variance_axis="head", key_padding_mask=mask, odd_negated=True
    )
    for a, b in zip(direct, ref, strict=True):
        assert torch.allclose(a, b, atol=ATOL64)


@pytest.mark.parametrize("masked", [False, True])
def test_head_layer_folded_path_equals_reference(masked):
    layer = create_attention("mirror", 32, num_heads=4, variance_axis="head").double()
    with torch.no_grad():
        layer.feature_map.alpha.uniform_(-2.0, 2.0)
    x = 3.0 * torch.randn(2, 20, 32, dtype=torch.float64)
    mask = padding_mask(2, 20) if masked else None
    layer.feature_map.fast_path = True
    assert layer.feature_map.fold_projection(layer.qkv.weight, layer.qkv.bias) is not None  # the folded path runs
    fast = layer(x, key_padding_mask=mask)
    layer.feature_map.fast_path = False
    ref = layer(x, key_padding_mask=mask)
    assert rel_err(fast, ref) < 1e-10


# -- 3: the default is unchanged ----------------------------------------------------------------
def test_explicit_block_equals_default():
    x = torch.randn(2, 20, 32)
    mask = padding_mask(2, 20)
    torch.manual_seed(5)
    default = create_attention("mirror", 32, num_heads=4)
    torch.manual_seed(5)
    explicit = create_attention("mirror", 32, num_heads=4, variance_axis="block")
    assert default.feature_map.variance_axis == "block" and explicit.feature_map.variance_axis == "block"
    for fast in (True, False):
        default.feature_map.fast_path = explicit.feature_map.fast_path = fast
        for m in (None, mask):
            assert torch.equal(default(x, key_padding_mask=m), explicit(x, key_padding_mask=m))
    assert "variance_axis" not in repr(default.feature_map)
    assert "variance_axis='head'" in repr(MirrorFeatureMap(2, 4, variance_axis="head"))


# -- 4: inner products before the ReLU ------------------------------------------------------------
@pytest.mark.parametrize("cross_head", [False, True])
def test_head_inner_products_preserved(cross_head):
    H, D = 3, 8
    fm = head_map(H, D, cross_head=cross_head)
    q, k = qk(H=H, D=D, M=9)
    rq, rk = fm.reflect(q, k)
    before = torch.einsum("bhnd,bhmd->bnm", q, k)
    assert torch.allclose(torch.einsum("bhnd,bhmd->bnm", rq, rk), before, atol=1e-10)
    if not cross_head:
        assert torch.allclose(rq @ rk.transpose(-1, -2), q @ k.transpose(-1, -2), atol=1e-10)
    assert not torch.allclose(rq, q)  # the reflections really act


# -- 5: the option does something ------------------------------------------------------------------
def test_head_differs_from_block():
    H, D = 3, 8
    fm = head_map(H, D)
    block = MirrorFeatureMap(H, D).double()
    block.load_state_dict(fm.state_dict())
    q, k = qk(H=H, D=D)
    var_block, var_head = block_variance(q, k), block_variance(q, k, axis="head")
    assert not torch.allclose(var_block, var_head, atol=1e-3)
    assert torch.equal(var_head, var_head[..., :1].expand_as(var_head))  # one σ² per (sample, head)
    assert not torch.allclose(fm.angles(q, k), block.angles(q, k), atol=1e-3)
    assert rel_err(fm(q, k)[0], block(q, k)[0]) > 1e-3


# -- 6: gradients ---------------------------------------------------------------------------------
class _Reflect(torch.nn.Module):
    def __init__(self, fm):
        super().__init__()
        self.fm = fm

    def forward(self, q, k):
        return self.fm.reflect(q, k)


def test_gradcheck_head_variance():
    B, N, H, D = 2, 5, 2, 4  # C = 8
    fm = head_map(H, D)
    q, k = qk(B=B, H=H, N=N, D=D)

    def reflected(qq, kk, th, al):
        # reflect() before the ReLU is smooth everywhere, so gradcheck is well defined
        return torch.func.functional_call(_Reflect(fm), {"fm.theta": th, "fm.alpha": al}, (qq, kk))

    def fused(qq, kk, th, al):  # the fast op (its own σ² code), u included
        return mirror_features(qq, kk, fm.u_c, th, al, variance_axis="head")

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (q, k, fm.theta, fm.alpha))
    assert torch.autograd.gradcheck(reflected, inputs)
    assert torch.autograd.gradcheck(fused, inputs)


# -- 7: errors and the layer / CLI keyword -----------------------------------------------------------
def test_bad_variance_axis_raises():
    with pytest.raises(ValueError, match="'block', 'head'"):
        MirrorFeatureMap(2, 4, variance_axis="channel")
    with pytest.raises(ValueError, match="'block', 'head'"):
        create_attention("mirror", 32, num_heads=4, variance_axis="sample")
    q, k = qk(B=1, H=2, N=3, D=4)
    theta = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="variance_axis"):
        mirror_features(q, k, None, theta, theta, variance_axis="heads")
    with pytest.raises(ValueError, match="variance_axis"):
        block_variance(q, k, axis="token")
    # accepted (and unused) without variance modulation
    create_attention("mirror_block", 32, num_heads=4, variance_axis="head")(torch.randn(1, 4, 32))


def test_create_attention_head_training_step():
    layer = create_attention("mirror", dim=64, num_heads=2, variance_axis="head")
    assert layer.feature_map.variance_axis == "head"
    x = torch.randn(2, 49, 64)
    y = layer(x)
    y.square().mean().backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert grads["feature_map.alpha"].abs().sum() > 0  # the gradient flows through the head variance


def test_cli_attention_option_accepted():
    # every option of the mirror feature map is an --attn-opt (the --attn-opt help's own example is alpha_init)
    for options in ({"variance_axis": "head"}, {"alpha_init": 0.1}, {"detach_variance": True}, {"theta_init": "zeros"}):
        check_attention_options("mirror", options, 64, 2)
    with pytest.raises(UsageError, match="no option 'variance_axes'"):
        check_attention_options("mirror", {"variance_axes": "head"}, 64, 2)
    with pytest.raises(UsageError, match="variance_axis"):
        check_attention_options("mirror", {"variance_axis": "batch"}, 64, 2)
