"""torch.compile(fullgraph=True): every registered attention and every model family traces without a graph
break, forward and backward, and matches eager.

The default suite traces with the "eager" backend (Dynamo only: seconds, and it finds every graph break);
the slow tests compile with inductor (the C++ CPU / Triton GPU code generator) and compare numbers.
"""

from __future__ import annotations

import pytest
import torch

import mirrorla
from mirrorla.ops.reflections import fused


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer_case(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    layer = mirrorla.create_attention(name, 32, num_heads=2).to(dtype)
    x = torch.randn(2, 49, 32, dtype=dtype, requires_grad=True)
    return layer, x


def _forward_backward(fn, x, **kw):
    y = fn(x, **kw)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    return y.detach(), grad


@pytest.mark.parametrize("name", mirrorla.list_attentions())
def test_every_attention_traces_without_graph_break(name):
    layer, x = _layer_case(name)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    y, g = _forward_backward(compiled, x, hw=(7, 7))
    y0, g0 = _forward_backward(layer, x, hw=(7, 7))
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-12)


def _models():
    def vit(attention):
        return lambda: mirrorla.create_model(
            "vit", attention=attention, img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32,
            depth=2, num_heads=2,
        )  # fmt: skip

    def seq(attention):
        return lambda: mirrorla.create_model(
            "seq_tiny", attention=attention, vocab_size=20, num_classes=5, max_len=64, pad_id=0
        )

    def images():
        return torch.randn(2, 1, 28, 28)

    def padded():
        return torch.cat([torch.randint(1, 20, (2, 40)), torch.zeros(2, 24, dtype=torch.long)], 1)

    return {
        "vit_mirror": (vit("mirror"), images),
        "vit_pola": (vit("pola"), images),
        "pvt_tiny_mirror": (
            lambda: mirrorla.create_model("pvt_tiny_mirror", num_classes=10),
            lambda: torch.randn(1, 3, 64, 64),
        ),
        "sr_tiny_mirror": (
            lambda: mirrorla.create_model("sr_tiny", attention="mirror"),
            lambda: torch.rand(1, 3, 12, 16),
        ),
        "seq_tiny_mirror_padded": (seq("mirror"), padded),
        "seq_tiny_nala_unpadded": (seq("nala"), lambda: torch.randint(1, 20, (2, 64))),
    }


@pytest.mark.parametrize("case", list(_models()))
def test_model_families_trace_without_graph_break(case):
    build, inputs = _models()[case]
    torch.manual_seed(0)
    model = build().double().eval()
    x = inputs()
    x = x.double() if x.is_floating_point() else x
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = compiled(x)
    out.float().sum().backward()  # the backward traces too
    torch.testing.assert_close(out.detach(), model(x).detach(), rtol=1e-12, atol=1e-12)


def test_l2vit_traces_without_graph_break():
    torch.manual_seed(0)
    model = mirrorla.create_model("l2vit_tiny", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    out = torch.compile(model, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(out, model(x))


def test_compiled_reflection_uses_the_same_product_in_real_arithmetic(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    angle = torch.rand(2, 3, 1, 4, dtype=torch.float64) * 3
    re, im = -torch.cos(angle), torch.sin(angle)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    expected = fused._reflect_relu(x, re, im, sign), fused._reflect_relu(x, re, im, None)  # complex arithmetic
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the branch torch.compile takes
    torch.testing.assert_close(fused._reflect_relu(x, re, im, sign), expected[0], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(fused._reflect_relu(x, re, im, None), expected[1], rtol=1e-14, atol=1e-14)
    assert not torch.equal(expected[0], expected[1])  # the sign matters: both branches are exercised


@pytest.mark.slow
@pytest.mark.parametrize("name", mirrorla.list_attentions())
def test_every_attention_compiles_with_inductor_and_matches_eager(name):
    """fp32, inductor's C++ backend on CPU: outputs within 1e-4 relative (reassociated reductions), gradients too."""
    layer, x = _layer_case(name, torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    y, g = _forward_backward(compiled, x, hw=(7, 7))
    y0, g0 = _forward_backward(layer, x, hw=(7, 7))
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-4)
