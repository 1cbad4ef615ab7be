"""MLLA, RALA, MALA and Agent attention against independent quadratic formulas (docs/methods.md §10–13).

The references in ``peers_reference.py`` build every N×N (or N×n) matrix in float64 from the module's
parameters. Tolerances (relative RMS error): < 1e-5 for the fp32 module (the issue's bound), ≤ 1e-10 for
the fp64 module (the two sides differ in the order of reductions only).
"""

import math

import pytest
import torch
from helpers import rel_err
from peers_reference import naive_agent, naive_mala, naive_mlla, naive_rala

from mirrorla import create_attention
from mirrorla.feature_maps import create_feature_map

REFERENCE = {"mlla": naive_mlla, "rala": naive_rala, "mala": naive_mala, "agent": naive_agent}
NAMES = list(REFERENCE)
# Square, non-square, the agent bias tables' 14×14 construction grid (no resize), a row (1-D input).
GRIDS = [(7, 7), (10, 13), (14, 14), (1, 12)]


def build(name, dim=64, heads=2, **kw):
    torch.manual_seed(0)
    m = create_attention(name, dim, num_heads=heads, **kw)
    with torch.no_grad():  # biases off zero so that they take part
        for pname, p in m.named_parameters():
            if pname.endswith("bias") and p.dim() == 1:
                p.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", GRIDS)
def test_matches_quadratic_form_fp32(name, hw):
    m = build(name)
    x = torch.randn(2, hw[0] * hw[1], 64) * 2
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(6, 6), (5, 8)])
def test_matches_quadratic_form_fp64_output_and_gradients(name, hw):
    m = build(name, dim=32, heads=2).double()
    x = (torch.randn(2, hw[0] * hw[1], 32, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(2, hw[0] * hw[1], 32, dtype=torch.float64)
    params = [p for p in m.parameters()]
    y = m(x, hw=hw)
    ours = torch.autograd.grad(y, [x, *params], g)
    ref = REFERENCE[name](m, x, hw)
    theirs = torch.autograd.grad(ref, [x, *params], g)
    assert rel_err(y, ref) <= 1e-10
    for (pname, _), a, b in zip([("x", None), *m.named_parameters()], ours, theirs, strict=True):
        assert rel_err(a, b) <= 1e-10, pname


@pytest.mark.parametrize(
    "name, options",
    [
        ("mlla", dict(rope=False)),
        ("mlla", dict(dwc_kernel=0, in_kernel=5)),
        ("rala", dict(rank_augment=False)),
        ("rala", dict(rope=False, dwc_kernel=3)),
        ("mala", dict(rope=False, dwc_kernel=0)),
        ("agent", dict(agent_num=16, bias_grid=(4, 6), dwc_kernel=0)),
        ("agent", dict(agent_num=1)),
    ],
)
def test_options_match_quadratic_form(name, options):
    m = build(name, **options)
    hw = (6, 8)
    x = torch.randn(2, 48, 64) * 2
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_prefix_token(name):
    # A DeiT-style cls token: it takes part in q, k, v; the grid parts (convs, RoPE, pool, biases) skip it.
    m = build(name, num_prefix_tokens=1)
    hw = (5, 6)
    x = torch.randn(2, 31, 64) * 2
    assert rel_err(m(x, hw=hw), REFERENCE[name](m, x, hw)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_key_padding_mask_is_honoured_in_every_branch(name):
    m = build(name)
    hw = (6, 7)
    x = torch.randn(2, 42, 64) * 2
    kpm = torch.rand(2, 42) > 0.3
    y = m(x, hw=hw, key_padding_mask=kpm)
    assert torch.isfinite(y).all()
    assert rel_err(y, REFERENCE[name](m, x, hw, kpm)) < 1e-5
    # The masked tokens' content cannot reach the kept outputs through any branch.
    x2 = torch.where(kpm[..., None], x, torch.randn_like(x) * 30)
    assert rel_err(m(x2, hw=hw, key_padding_mask=kpm)[kpm], y[kpm]) < 1e-5


def test_agent_mask_on_a_row_depends_on_the_padded_length():
    # Why agent attention is left out of the padding-equals-truncation test (test_seq_1d_forms.py): the
    # agent bins and the bias tables are laid over the padded grid (1, N), not over the kept tokens.
    m = build("agent")
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("_bias"):
                p.normal_(0, 1)
    x = torch.randn(1, 40, 64)
    kpm = torch.arange(40)[None] < 30
    with torch.no_grad():
        padded = m(x, hw=(1, 40), key_padding_mask=kpm)[:, :30]
        truncated = m(x[:, :30], hw=(1, 30))
    assert rel_err(padded, truncated) > 1e-3


def test_rank_augmented_map_invariants():
    fm = create_feature_map("rank_augmented", 2, 8)
    q, k = torch.randn(3, 2, 20, 8), torch.randn(3, 2, 20, 8)
    phi_q, phi_k = fm(q, k)
    plain = torch.nn.functional.elu(k) + 1
    weights = phi_k / plain  # one weight per key and head
    assert (phi_q > 0).all() and (phi_k > 0).all()
    assert torch.allclose(weights, weights[..., :1].expand_as(weights), rtol=1e-5)
    assert torch.allclose(weights[..., 0].mean(-1), torch.ones(3, 2), rtol=1e-5)  # mean weight 1 (M·softmax)
    assert not fm.token_local
    # Permuting the tokens permutes the features (q̄ and the softmax see a set, not a sequence).
    perm = torch.randperm(20)
    pq, pk = fm(q[:, :, perm], k[:, :, perm])
    assert torch.allclose(pq, phi_q[:, :, perm]) and torch.allclose(pk, phi_k[:, :, perm], rtol=1e-5)


def test_mala_equals_the_mean_path_rescaled_plus_a_mean_shift():
    # docs/methods.md §12: O_mala = s·num + num/(den + ε/s) − s·den·v̄; with rope off and ε → 0 the middle
    # term is the normalised (mean-path) output, so O_mala − mean-path = s·(num − den·v̄).
    mala = build("mala", rope=False, dwc_kernel=0, eps=1e-12).double()
    x = torch.randn(2, 30, 64, dtype=torch.float64)
    q, k, v, _ = mala.project(x)
    phi_q, phi_k = mala.feature_map(q, k)
    out = mala.mix(phi_q, phi_k, v, None, False, (5, 6))
    num = phi_q @ (phi_k.transpose(-1, -2) @ v) / 30
    den = phi_q @ phi_k.mean(-2, keepdim=True).transpose(-1, -2)
    s = 32**-0.5
    assert rel_err(out - num / den, s * (num - den * v.mean(-2, keepdim=True))) < 1e-9


def test_mlla_rope_splits_heads_into_row_and_column_heads():
    # docs/methods.md §10.1: with 2 heads, head 0 carries only row phases and head 1 only column phases.
    m = build("mlla", dim=16, heads=2)
    cos, _ = m.rope.tables((3, 4), 0, torch.float64)  # (H, N, 1, D/2)
    rows = torch.arange(3).repeat_interleave(4)
    cols = torch.arange(4).repeat(3)
    for head, idx in ((0, rows), (1, cols)):
        other = cols if head == 0 else rows
        for a in range(12):
            for b in range(12):
                if idx[a] == idx[b] and other[a] != other[b]:
                    assert torch.equal(cos[head, a], cos[head, b])


@pytest.mark.parametrize("name", ["rala", "mala"])
def test_without_grid_parts_the_layer_is_permutation_equivariant(name):
    # RoPE and LePE off: the value paths see the tokens as a set (q̄, the softmax over keys, mean v).
    m = build(name, dwc_kernel=0, rope=False)
    t = torch.randn(2, 64, 64)
    perm = torch.randperm(64)
    assert rel_err(m(t[:, perm], hw=(8, 8)), m(t, hw=(8, 8))[:, perm]) < 1e-5


def test_agent_with_one_agent_is_attention_to_the_mean_query():
    # n = 1, no biases, no DWC: the agent is the mean query; the broadcast softmax over one agent is 1,
    # so every token gets softmax(s·q̄ Kᵀ) V.
    m = build("agent", agent_num=1, dwc_kernel=0)
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("_bias"):
                p.zero_()
    x = torch.randn(2, 30, 64)
    y = m(x, hw=(5, 6))
    q, k, v = m.qkv(x).chunk(3, -1)
    h = lambda t: t.view(2, 30, 2, 32).transpose(1, 2)  # noqa: E731
    agent = h(q).mean(-2, keepdim=True)
    o = torch.softmax(agent @ h(k).transpose(-1, -2) / math.sqrt(32), -1) @ h(v)
    expected = m.proj(o.expand(2, 2, 30, 32).transpose(1, 2).reshape(2, 30, 64))
    assert rel_err(y, expected) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    m = build(name, dim=8, heads=2).double()
    x = (torch.randn(1, 6, 8, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: m(t, hw=(2, 3)), (x,), fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_grid_and_construction_errors(name):
    m = create_attention(name, 64, num_heads=2)
    with pytest.raises(ValueError, match=r"H\*W"):
        m(torch.randn(1, 50, 64), hw=(7, 8))
    with pytest.raises(ValueError, match="not a square"):
        m(torch.randn(1, 50, 64))
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(1, 49, 64), attn_mask=torch.ones(49, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal|depthwise-conv|sequence"):
        m(torch.randn(1, 49, 64), is_causal=True)


def test_construction_errors():
    with pytest.raises(TypeError, match="fixes 'feature_map'"):
        create_attention("rala", 64, num_heads=2, feature_map="relu")
    with pytest.raises(TypeError, match="fixes 'gate'"):
        create_attention("mlla", 64, num_heads=2, gate="linear")
    with pytest.raises(TypeError, match="fixes 'value_path'"):
        create_attention("mala", 64, num_heads=2, value_path="mean")
    with pytest.raises(ValueError, match="head_dim % 4"):
        create_attention("rala", 12, num_heads=2)  # head_dim 6
    with pytest.raises(ValueError, match="dim % 4"):
        create_attention("mlla", 6, num_heads=1)
    with pytest.raises(ValueError, match="perfect square"):
        create_attention("agent", 64, num_heads=2, agent_num=50)
    with pytest.raises(ValueError, match="bias_grid"):
        create_attention("agent", 64, num_heads=2, bias_grid=(0, 4))
    with pytest.raises(ValueError, match="value_path"):
        from mirrorla.layers import RotaryLinearAttention

        RotaryLinearAttention(64, 2, value_path="median")


# -- parameter counts vs the official modules, and the comparison entry points ------------------------------


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        # MLLA block mixer (C = 64): in_proj, act_proj, out_proj 3·4160; dwc and attn.lepe 3×3 2·640; attn.qk 8320.
        ("mlla", {}, 22080),
        # RAVLT GateLinearAttentionNoSilu(64, 2): qkvo 1×1 conv 16640; lepe 5×5 1664; proj 1×1 conv 4160.
        ("rala", {}, 22464),
        ("mala", {}, 22464),  # MAViT AddLinearAttention: the same parts
        # Agent-DeiT AgentAttention(64, 2, agent_num=49, window=14): qkv 12480; proj 4160; dwc 640;
        # an/na 2·2·49·49 = 9604; ah/aw/ha/wa 4·2·49·14 = 5488; ac/ca 2·2·49 = 196 (the cls token's).
        ("agent", dict(num_prefix_tokens=1), 32568),
    ],
)
def test_parameter_count_matches_official(name, kwargs, expected):
    assert n_params(create_attention(name, 64, num_heads=2, **kwargs)) == expected


def test_agent_deit_tiny_parameter_count_matches_official():
    # The official agent_deit_tiny (VisionTransformer of agent_deit.py, patch 16, C 192, depth 12, 3 heads,
    # 49 agents in every block, window 14) has 6,015,640 parameters (counted from the official class; the
    # command is in docs/peers.md): DeiT-T's 5,717,416 plus 12 × 24,852 for the DWC and the bias tables.
    timm = pytest.importorskip("timm")
    assert n_params(timm.create_model("deit_tiny_agent")) == 6_015_640


@pytest.mark.parametrize("command", [["compare"], ["sr", "compare"], ["lra", "compare"], ["bench", "ops"]])
def test_every_comparison_command_accepts_the_new_names(command, tmp_path, capsys):
    # The names are checked in order before any run starts: with an unknown name last, the error names only
    # it, so every new name passed the check.
    from mirrorla.cli import main

    names = ",".join([*NAMES, "nope"])
    option = ["--methods", names] if command[0] == "bench" else ["--attentions", names]
    assert main([*command, *option, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and not any(f"'{n}'" in err.split("valid names")[0] for n in NAMES)


@pytest.mark.slow
def test_fashion_mnist_comparison_runs_the_new_attentions(tmp_path):
    # `mirrorla compare --attentions mlla,rala,mala,agent` end to end on a tiny synthetic set: training, the MAC
    # count and the throughput of each. (sr/lra compare build their models through the same registry; their
    # registry-driven model tests cover the new names.)
    from test_compare import TINY, _synthetic

    from mirrorla.engine.compare import BASE, CompareConfig, run_compare

    cc = CompareConfig(
        attentions=tuple(NAMES),
        seeds=(0,),
        base=BASE.replace(**TINY),
        out_dir=str(tmp_path),
        throughput_batch=4,
        throughput_warmup=1,
        throughput_iters=1,
        throughput_rounds=1,
    )
    results = run_compare(cc, _synthetic(n_train=32, n_eval=16))
    assert results["attentions"] == NAMES
    for name in NAMES:
        m = results["methods"][name]
        assert m["params"] > 0 and m["macs"] > 0 and m["eval_img_s"] > 0 and m["train_img_s"] > 0
        assert math.isfinite(m["runs"]["0"]["final_top1"])
