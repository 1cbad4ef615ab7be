"""Registry-driven tests of the feature maps: every registered map is tested once registered."""

import pytest
import torch

from mirrorla.feature_maps import (
    FeatureMap,
    create_feature_map,
    feature_map_options,
    list_feature_maps,
    register_feature_map,
)
from mirrorla.layers import LinearAttention

B, H, N, D = 2, 3, 13, 8  # N odd and not a square


def test_required_names_are_registered():
    assert set(list_feature_maps()) >= {"relu", "elu", "identity", "mirror", "focused", "polarity", "norm_aware"}


@pytest.mark.parametrize("name", list_feature_maps())
def test_shape_sign_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    fm = create_feature_map(name, H, D).double()
    assert isinstance(fm, FeatureMap)
    q = (2 * torch.randn(B, H, N, D, dtype=torch.float64)).requires_grad_()
    k = (2 * torch.randn(B, H, N, D, dtype=torch.float64)).requires_grad_()
    phi_q, phi_k = fm(q, k)
    F = fm.feature_dim(D)
    assert phi_q.shape == (B, H, N, F) and phi_k.shape == (B, H, N, F)
    assert torch.isfinite(phi_q).all() and torch.isfinite(phi_k).all()
    if fm.non_negative:
        assert (phi_q >= 0).all() and (phi_k >= 0).all()
    if name != "identity":  # every linear-attention map gives non-negative scores
        assert (phi_q @ phi_k.transpose(-1, -2) >= -1e-12).all()
    (phi_q.square().sum() + phi_k.sum()).backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0
    for pname, p in fm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}.{pname} gets a zero gradient"


def test_unknown_and_duplicate_names_raise_listing_valid_names():
    with pytest.raises(ValueError, match="unknown feature map 'mirorr'; valid names: .*mirror"):
        create_feature_map("mirorr", H, D)
    with pytest.raises(ValueError, match="already registered; registered: .*relu"):
        register_feature_map("relu", FeatureMap)
    with pytest.raises(TypeError, match="has no option.*'alhpa'.*alpha"):
        create_feature_map("polarity", H, D, alhpa=3.0)


def test_options_are_the_constructor_keywords():
    assert feature_map_options("polarity") == {"alpha"}
    assert "variance_modulation" in feature_map_options("mirror")
    assert feature_map_options("relu") == set()


def test_linear_attention_builds_its_map_by_name():
    layer = LinearAttention(24, 3, feature_map="polarity", feature_map_kwargs=dict(alpha=7.0))
    assert layer.feature_map.alpha == 7.0
    direct = LinearAttention(24, 3, feature_map="mirror", variance_modulation=False)  # map options as keywords
    assert not direct.feature_map.variance_modulation
    with pytest.raises(TypeError, match="both directly and in feature_map_kwargs"):
        LinearAttention(24, 3, feature_map="polarity", alpha=2.0, feature_map_kwargs=dict(alpha=3.0))
    with pytest.raises(TypeError):
        LinearAttention(24, 3, feature_map="relu", alpha=2.0)  # not an option of relu: never dropped
    with pytest.raises(ValueError, match="valid names"):
        LinearAttention(24, 3, feature_map="rleu")
