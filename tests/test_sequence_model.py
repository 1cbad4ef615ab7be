"""The sequence classifier of the long-range tasks: every registered attention, padding, pairs, layouts, errors."""

from __future__ import annotations

import pytest
import torch

from mirrorla import list_attentions
from mirrorla.engine.optim import decay_groups
from mirrorla.models import create_model
from mirrorla.models.sequence import SEQ_SIZES, SequenceClassifier

# Attentions whose output at a real token depends on padding only through the key mask: no convolution over
# the sequence and no position-dependent part that reaches padded positions.
MASK_EXACT = ("softmax", "linear_relu", "linear_elu", "mirror", "mirror_block", "mirror_block_var", "mirror_cross")


def _model(attention: str, **kw) -> SequenceClassifier:
    torch.manual_seed(0)
    args = dict(vocab_size=20, num_classes=5, max_len=64, embed_dim=32, depth=2, num_heads=2)
    return SequenceClassifier(attention=attention, **{**args, **kw})


@pytest.mark.parametrize("attention", list_attentions())
def test_forward_backward_every_attention(attention):
    model = _model(attention)
    tokens = torch.randint(1, 20, (3, 49))
    tokens[0, 30:] = 0  # ragged: padding at the end of one sequence
    out = model(tokens)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attention", MASK_EXACT)
def test_padding_does_not_change_the_prediction(attention):
    model = _model(attention).eval()
    real = torch.randint(1, 20, (2, 37))
    padded = torch.cat([real, torch.zeros(2, 20, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), model(real), rtol=1e-4, atol=1e-5)


def test_padding_is_seen_without_pad_id():
    # pad_id=None (images): token 0 is a real token, so appending zeros changes the mean pooling.
    model = _model("linear_relu", pad_id=None).eval()
    real = torch.randint(1, 20, (2, 37))
    padded = torch.cat([real, torch.zeros(2, 20, dtype=torch.long)], dim=1)
    assert not torch.allclose(model(padded), model(real), atol=1e-4)


def test_layout_1d_and_2d():
    model = _model("nala", max_len=64, grid=(8, 8), pad_id=None)
    assert model.layout(64) == (8, 8)
    assert _model("nala").layout(37) == (1, 37)
    out = model(torch.randint(0, 20, (2, 64)))
    assert out.shape == (2, 5)
    with pytest.raises(ValueError, match="exactly 64 tokens"):
        model(torch.randint(0, 20, (2, 63)))
    with pytest.raises(ValueError, match="must cover max_len"):
        _model("nala", max_len=64, grid=(8, 7))


def test_pair_model_is_a_shared_encoder():
    model = _model("mirror", pair=True).eval()
    tokens = torch.randint(1, 20, (4, 2, 30))
    out = model(tokens)
    assert out.shape == (4, 5)
    u, v = model.encode(tokens[:, 0]), model.encode(tokens[:, 1])
    torch.testing.assert_close(out, model.head(torch.cat([u, v, u * v, u - v], -1)))
    with pytest.raises(ValueError, match=r"\(B, 2, L\)"):
        model(torch.randint(1, 20, (4, 30)))


def test_cls_pooling():
    model = _model("softmax", pool="cls")
    out = model(torch.randint(1, 20, (2, 10)))
    assert out.shape == (2, 5)
    assert "cls_token" in model.no_weight_decay()
    with pytest.raises(ValueError, match="pure token grid"):
        _model("window_softmax", pool="cls")


def test_bad_input_errors():
    model = _model("mirror")
    with pytest.raises(ValueError, match="1 to max_len = 64"):
        model(torch.randint(1, 20, (2, 65)))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 20\)"):
        model(torch.full((2, 10), 20))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.rand(2, 10))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        model(torch.randint(1, 20, (10,)))
    with pytest.raises(ValueError, match="pool must be"):
        _model("mirror", pool="max")
    with pytest.raises(ValueError, match="unknown attention"):
        _model("nope")


def test_no_weight_decay_reaches_the_optimizer():
    model = _model("mirror")
    no_decay = {id(p) for p in decay_groups(model, 0.05)[0]["params"]}
    named = dict(model.named_parameters())
    assert id(named["pos_embed"]) in no_decay
    angles = [n for n in named if n.endswith("theta") or n.endswith("alpha")]
    assert angles and all(id(named[n]) in no_decay for n in angles)


def test_create_model_names_and_sizes():
    for size, preset in SEQ_SIZES.items():
        m = create_model(f"seq_{size}", attention="linear_relu", vocab_size=10, num_classes=3, max_len=16)
        assert m.embed_dim == preset.embed_dim and len(m.blocks) == preset.depth
    with pytest.raises(ValueError, match="needs an attention"):
        create_model("seq_tiny", vocab_size=10, num_classes=3, max_len=16)
    with pytest.raises(ValueError, match="vocab_size"):
        create_model("seq_tiny", attention="mirror")


def test_grad_checkpointing_matches():
    model = _model("pola")
    tokens = torch.randint(1, 20, (2, 40))
    ref = model(tokens)
    ref.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(tokens)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("attention", ["flatten", "pola"])
def test_key_position_table_is_built_on_the_layout(attention):
    assert _model(attention).blocks[0].attn.pos_embed.grid == (1, 64)
    assert _model(attention, grid=(8, 8), pad_id=None).blocks[0].attn.pos_embed.grid == (8, 8)
    # an explicit setting wins; None turns the table off
    assert _model(attention, attn_kwargs={"key_pos_grid": None}).blocks[0].attn.pos_embed is None
