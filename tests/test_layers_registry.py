"""Registry-driven tests: every registered attention is tested the moment it is registered."""

import pytest
import torch

import mirrorla
from mirrorla import create_attention, list_attentions

NAMES = list_attentions()
DIM, HEADS, GRID = 64, 2, (7, 9)  # non-square 7×9 grid, head dim 32


def build(name, dim=DIM, heads=HEADS, **kw):
    torch.manual_seed(0)
    return create_attention(name, dim, num_heads=heads, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite_and_every_parameter_gets_a_gradient(name):
    layer = build(name)
    x = torch.randn(2, GRID[0] * GRID[1], DIM, requires_grad=True)
    y = layer(x, hw=GRID)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [n for n, p in layer.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_inputs_scaled_by_100_stay_finite(name):
    layer = build(name)
    y = layer(100 * torch.randn(2, GRID[0] * GRID[1], DIM), hw=GRID)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_autocast_x30_is_finite(name, dtype):
    layer = build(name)
    x = (30 * torch.randn(2, GRID[0] * GRID[1], DIM)).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x, hw=GRID)
    assert torch.isfinite(y.float()).all()
    y.float().pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    for n, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    layer = build(name, dim=8, heads=2).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, hw=(2, 2)), (x,), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, tmp_path):
    a, b = build(name), create_attention(name, DIM, num_heads=HEADS)
    torch.save(a.state_dict(), tmp_path / "sd.pt")
    b.load_state_dict(torch.load(tmp_path / "sd.pt"))
    x = torch.randn(1, GRID[0] * GRID[1], DIM)
    a.eval(), b.eval()
    assert torch.equal(a(x, hw=GRID), b(x, hw=GRID))


@pytest.mark.parametrize("name", NAMES)
def test_timm_attn_layer_hook(name):
    timm = pytest.importorskip("timm")
    if not getattr(mirrorla.registry.get_attention_entry(name).cls, "supports_prefix_tokens", True):
        with pytest.raises(ValueError, match="prefix"):
            mirrorla.create_attention(name, DIM, num_heads=HEADS, num_prefix_tokens=1)
        pytest.skip(f"{name} works on a pure token grid; ViT's cls token is rejected with a clear error")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=64,
        num_classes=10,
        attn_layer=mirrorla.attention_layer(name, num_prefix_tokens=1),
    )
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert type(model.blocks[0].attn).registry_name == name


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_shapes_raise(name):
    layer = build(name)
    with pytest.raises(ValueError, match=r"\(B, N, 64\)"):
        layer(torch.randn(49, DIM))
    with pytest.raises(ValueError, match=r"\(B, N, 64\)"):
        layer(torch.randn(1, 49, DIM + 1))


@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype_reach_every_parameter_and_buffer(name):
    # timm's Block passes device/dtype; feature maps and conv branches must follow them too.
    layer = build(name, dtype=torch.float64)
    tensors = list(layer.named_parameters()) + list(layer.named_buffers())
    wrong = [n for n, t in tensors if t.is_floating_point() and t.dtype != torch.float64]
    assert not wrong, f"not float64: {wrong}"
    y = layer(torch.randn(1, GRID[0] * GRID[1], DIM, dtype=torch.float64), hw=GRID)
    assert y.dtype == torch.float64
    meta = build(name, device="meta")
    assert all(t.device.type == "meta" for _, t in list(meta.named_parameters()) + list(meta.named_buffers()))
