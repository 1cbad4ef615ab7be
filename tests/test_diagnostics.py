"""Attention diagnostics (mirrorla.diagnostics, `mirrorla analyze`): hand-computable cases, sampled against
exact, capture of every registered attention, padding, and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import needs_fashion_mnist
from torch import nn

import mirrorla
from mirrorla.commands import main
from mirrorla.diagnostics import AnalyzeConfig, analyze_model, attention_layers
from mirrorla.diagnostics.measures import (
    average_ranks,
    dead_fraction,
    discarded_energy,
    effective_rank,
    feature_max,
    feature_rows,
    low_rank_singular_values,
    pca_2d,
    row_entropy,
    sampled_singular_values,
    softmax_rows,
    spearman,
    topk_mass,
)
from mirrorla.feature_maps import MirrorFeatureMap


# -- hand-computable cases ---------------------------------------------------------------------------
def test_uniform_attention_has_entropy_log_n_and_rank_one():
    N, F = 37, 5
    rows, empty = feature_rows(torch.ones(N, F), torch.ones(N, F))
    assert not empty.any()
    torch.testing.assert_close(row_entropy(rows), torch.full((N,), math.log(N)))
    assert effective_rank(low_rank_singular_values(torch.ones(N, F), torch.ones(N, F))) == pytest.approx(1.0)
    softmax = softmax_rows(torch.zeros(4, 8), torch.randn(N, 8), 0.125)  # q = 0: every score equal
    torch.testing.assert_close(row_entropy(softmax), torch.full((4,), math.log(N)))
    assert topk_mass(rows, 5)[0] == pytest.approx(5 / N)


def test_one_hot_map_has_entropy_zero_and_rank_one():
    N = 20
    phi_k = torch.zeros(N, 3)
    phi_k[7, 0] = 1.0  # only key 7 has a feature; every query attends to it alone
    phi_q = torch.rand(N, 3) + 0.1
    rows, _ = feature_rows(phi_q, phi_k)
    assert torch.equal(rows.argmax(-1), torch.full((N,), 7))
    torch.testing.assert_close(row_entropy(rows), torch.zeros(N))
    torch.testing.assert_close(topk_mass(rows, 1), torch.ones(N))
    assert effective_rank(low_rank_singular_values(phi_q / (phi_q @ phi_k.sum(0))[:, None], phi_k)) == pytest.approx(1)
    assert effective_rank(torch.linalg.svdvals(rows.double())) == pytest.approx(1.0)


def test_effective_rank_of_identity_and_zero():
    assert effective_rank(torch.ones(6)) == pytest.approx(6.0)
    assert effective_rank(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(4)) == 0.0


def test_relu_of_a_symmetric_distribution_discards_half_the_energy():
    x = torch.randn(2, 500, 8)
    dropped, total = discarded_energy(torch.cat([x, -x], 1))  # exactly symmetric
    assert dropped / total == pytest.approx(0.5, abs=1e-12)
    valid = torch.zeros(1000, dtype=torch.bool)
    valid[:500] = True  # only x: its negative part
    dropped, total = discarded_energy(torch.cat([x, -x], 1), valid)
    assert dropped == pytest.approx(float(x.clamp_max(0).double().square().sum()))


@pytest.mark.parametrize(
    ("theta", "x", "expected"),
    [
        (0.0, (1.0, 0.0), 1.0),  # H = diag(−1, 1): (1, 0) → (−1, 0), all of it negative
        (math.pi / 2, (1.0, 0.0), 0.0),  # H = diag(1, −1): (1, 0) stays
        (0.0, (0.6, 0.8), 0.36),  # → (−0.6, 0.8): 0.36 of the energy
        (math.pi / 4, (0.6, 0.8), 1.0),  # H = [[0, −1], [−1, 0]]: → (−0.8, −0.6)
    ],
)
def test_reflection_before_relu_changes_the_discarded_energy_as_by_hand(theta, x, expected):
    fm = MirrorFeatureMap(1, 2, variance_modulation=False, cross_head=False, theta_init=theta)
    q = torch.tensor(x, dtype=torch.float64).view(1, 1, 1, 2)
    pre_q, _ = fm.truncated_input(q, q)
    dropped, total = discarded_energy(pre_q)
    assert dropped / total == pytest.approx(expected, abs=1e-12)
    assert total == pytest.approx(1.0)  # the reflection keeps the norm


def test_dead_dimensions():
    phi = torch.rand(3, 10, 4) + 0.1
    phi[..., 2] = 0.0  # never positive
    phi[1, 3, 1] = 0.0  # zero once: alive
    assert dead_fraction(feature_max(phi)).tolist() == [0.25, 0.25, 0.25]
    valid = torch.zeros(10, dtype=torch.bool)
    assert torch.isinf(feature_max(phi, valid)).all()  # no valid token: no maximum


def test_spearman_with_ties_against_hand_ranks():
    x = torch.tensor([[1.0, 2.0, 2.0, 3.0, 0.0]])
    y = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]])
    assert average_ranks(x).tolist() == [[1.0, 2.5, 2.5, 4.0, 0.0]]
    expected = np.corrcoef([1.0, 2.5, 2.5, 4.0, 0.0], [1.0, 2.0, 3.0, 4.0, 0.0])[0, 1]
    assert float(spearman(x, y)) == pytest.approx(expected)
    assert float(spearman(y, y.exp())) == pytest.approx(1.0)  # monotone: identical ranking
    assert float(spearman(y, -y)) == pytest.approx(-1.0)
    assert torch.isnan(spearman(torch.zeros(1, 5), y))  # a constant row has no ranking


def test_pca_2d_explains_a_line_fully():
    t = torch.linspace(0, 1, 30)[:, None]
    rows = torch.cat([t, 2 * t, -t], 1)  # points on a line
    coords, share = pca_2d(rows)
    assert share[0] == pytest.approx(1.0) and share[1] == pytest.approx(0.0, abs=1e-12)
    assert coords.shape == (30, 2)


# -- sampled against exact -----------------------------------------------------------------------
def test_low_rank_singular_values_equal_the_dense_ones():
    a, b = torch.rand(50, 6), torch.rand(40, 6)
    torch.testing.assert_close(low_rank_singular_values(a, b)[:6], torch.linalg.svdvals((a @ b.T).double())[:6])


def test_sampled_singular_values_estimate_the_exact_ones():
    torch.manual_seed(0)
    q, k = torch.randn(400, 8), torch.randn(400, 8)
    full = softmax_rows(q, k, 0.35).double()
    exact = torch.linalg.svdvals(full)
    half = sampled_singular_values(full[torch.randperm(400)[:200]], 400)
    assert half[0] == pytest.approx(float(exact[0]), rel=0.05)  # the leading value, from half the rows
    assert effective_rank(half) == pytest.approx(effective_rank(exact), rel=0.3)


class _OneLayer(nn.Module):
    """A bare attention layer as a model: x (B, N, C) → layer(x, key_padding_mask)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.attn = layer

    def forward(self, batch):
        x, mask = batch
        return self.attn(x, key_padding_mask=mask)


@pytest.mark.parametrize("attention", ["linear_relu", "mirror", "softmax"])
def test_analyze_matches_a_dense_computation_when_every_query_is_sampled(attention):
    torch.manual_seed(1)
    layer = mirrorla.create_attention(attention, 16, num_heads=2)
    x = torch.randn(2, 30, 16)
    result = analyze_model(_OneLayer(layer), [(x, None)], AnalyzeConfig(queries=30, rank_keys=30))
    heads = result["layers"][0]["heads"]
    with torch.no_grad():
        q, k, _ = layer.qkv(x).view(2, 30, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        for h in range(2):
            entropies, ranks = [], []
            for b in range(2):
                if attention == "softmax":
                    dense = torch.softmax(q[b, h] @ k[b, h].T / math.sqrt(8), -1)
                else:
                    phi_q, phi_k = layer.feature_map(q[b : b + 1], k[b : b + 1])
                    scores = phi_q[0, h] @ phi_k[0, h].T
                    total = scores.sum(-1, keepdim=True)  # 0 for a query with φq = 0: no row (analyze's empty_rows)
                    dense = torch.where(total > 0, scores / total, torch.zeros_like(scores))
                entropies.append(row_entropy(dense[dense.sum(-1) > 0]))
                ranks.append(effective_rank(torch.linalg.svdvals(dense.double())))
            assert heads[h]["entropy"] == pytest.approx(float(torch.cat(entropies).mean()), rel=1e-4)
            assert heads[h]["effective_rank"] == pytest.approx(sum(ranks) / 2, rel=1e-4)
    if attention == "softmax":  # forcing the sampled estimate with every row sampled gives the exact rank
        estimated = analyze_model(_OneLayer(layer), [(x, None)], AnalyzeConfig(queries=30, exact_rank_limit=1))
        assert estimated["layers"][0]["heads"][0]["effective_rank"] == pytest.approx(heads[0]["effective_rank"])
        assert "estimated" in estimated["layers"][0]["effective_rank_method"][0]


def test_sampled_query_means_track_the_exact_ones():
    torch.manual_seed(2)
    layer = mirrorla.create_attention("linear_relu", 16, num_heads=1)
    x = torch.randn(1, 400, 16) * 3
    exact = analyze_model(_OneLayer(layer), [(x, None)], AnalyzeConfig(queries=400))["mean"]
    sampled = analyze_model(_OneLayer(layer), [(x, None)], AnalyzeConfig(queries=100))["mean"]
    assert sampled["entropy"] == pytest.approx(exact["entropy"], rel=0.02)
    assert sampled["topk_mass"] == pytest.approx(exact["topk_mass"], rel=0.1)
    assert sampled["effective_rank"] == exact["effective_rank"]  # exact for linear attention at any sample


@pytest.mark.parametrize("attention", ["linear_relu", "mirror", "linear_elu", "softmax"])
def test_padded_tokens_are_left_out(attention):
    torch.manual_seed(3)
    layer = mirrorla.create_attention(attention, 16, num_heads=2)
    x = torch.randn(1, 24, 16)
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[:, :17] = True
    padded = analyze_model(_OneLayer(layer), [(x, mask)], AnalyzeConfig(queries=64))["mean"]
    alone = analyze_model(_OneLayer(layer), [(x[:, :17], None)], AnalyzeConfig(queries=64))["mean"]
    for name, value in alone.items():
        if value is None:
            assert padded[name] is None
        else:
            assert padded[name] == pytest.approx(value, rel=1e-5, abs=1e-9), name


# -- every attention of a model ------------------------------------------------------------------
def _vit(attention, **kw):
    torch.manual_seed(0)
    return mirrorla.create_model(
        "vit", attention=attention, img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2,
        num_heads=2, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("attention", [a for a in mirrorla.list_attentions() if a not in ("window_softmax", "agent")])
def test_every_registered_global_attention_is_measured(attention):
    result = analyze_model(_vit(attention), [torch.randn(3, 1, 28, 28)], AnalyzeConfig(queries=8))
    assert [layer["layer"] for layer in result["layers"]] == ["blocks.0.attn", "blocks.1.attn"]
    layer = result["layers"][0]
    assert layer["tokens"] == 17 and layer["grid"] == [4, 4] and layer["inputs"] == 3
    mean = layer["mean"]
    assert 0 < mean["entropy_norm"] <= 1 + 1e-6 and 0 < mean["top1_mass"] <= mean["topk_mass"] <= 1 + 1e-6
    assert mean["effective_rank"] >= 1 - 1e-6 and mean["attention_distance"] > 0
    if attention == "softmax":
        assert layer["kind"] == "softmax" and mean["discarded_energy_q"] is None and mean["rank_correlation"] is None
    else:
        assert layer["kind"] == "linear" and -1 <= mean["rank_correlation"] <= 1
        assert 0 <= mean["dead_dims_q"] <= 1
        keeps_both_signs = attention in ("pola", "nala", "nala_cos", "linear_elu", "mlla", "rala", "mala")
        assert layer["truncation"] == ("none" if keeps_both_signs else "negative half")
        assert (mean["discarded_energy_q"] == 0) == keeps_both_signs
    assert set(layer["pca"]["maps"]) == {"identity", "relu", "own"}


def test_agent_attention_is_reported_as_not_measured():
    from mirrorla.diagnostics.capture import skipped_layers

    skipped = skipped_layers(_vit("agent"))
    assert [name for name, _ in skipped] == ["blocks.0.attn", "blocks.1.attn"]
    assert all("AgentAttention" in why and "agent tokens" in why for _, why in skipped)
    with pytest.raises(ValueError, match="no attention layer that analyze can measure"):
        analyze_model(_vit("agent"), [torch.randn(1, 1, 28, 28)], AnalyzeConfig(queries=8))


def test_window_attention_is_reported_as_not_measured():
    model = mirrorla.create_model("l2vit_tiny", num_classes=10, in_chans=1)  # window and global stages alternate
    result = analyze_model(model, [torch.randn(1, 1, 64, 64)], AnalyzeConfig(queries=8))
    assert len(result["skipped"]) == len(result["layers"]) == 6
    assert all("LocalWindowAttention" in s["reason"] for s in result["skipped"])
    assert result["layers"][0]["layer"] == "stages.0.1.attn" and result["layers"][0]["grid"] == [16, 16]


@pytest.mark.parametrize("attention", ["linear_relu", "softmax"])
def test_cls_token_and_per_input_masks_against_a_dense_computation(attention):
    torch.manual_seed(0)
    layer = mirrorla.create_attention(attention, 16, num_heads=2, num_prefix_tokens=1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = layer

        def forward(self, batch):
            return self.attn(batch[0], hw=(4, 4), key_padding_mask=batch[1])

    x = torch.randn(2, 17, 16)
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[1, 5:9] = False  # the second input has 4 padded grid tokens, the first none
    result = analyze_model(Model(), [(x, mask)], AnalyzeConfig(queries=64, rank_keys=64))
    with torch.no_grad():
        q, k, _ = layer.qkv(x).view(2, 17, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    pos = torch.tensor([[i // 4, i % 4] for i in range(16)], dtype=torch.float32)
    for h in range(2):
        entropies, distances = [], []
        for b in range(2):
            v = mask[b]
            if attention == "softmax":
                dense = torch.softmax(q[b, h] @ k[b, h].T / math.sqrt(8) + torch.where(v, 0.0, -math.inf), -1)
            else:
                scores = torch.relu(q[b, h]) @ torch.relu(k[b, h]).T * v
                dense = scores / scores.sum(-1, keepdim=True)
            tokens = v.nonzero().flatten()
            dense = dense[v]  # valid queries
            live = dense.sum(-1) > 0  # a ReLU query with φq = 0 has no row (analyze's empty_rows)
            entropies.append(row_entropy(dense[live]))
            tokens, dense = tokens[live], dense[live]
            grid_rows = dense[:, 1:][tokens >= 1]  # grid queries, grid keys (the cls token is no position)
            dist = torch.cdist(pos[tokens[tokens >= 1] - 1], pos)
            d = (grid_rows * dist).sum(-1) / grid_rows.sum(-1)
            distances.append(d[~d.isnan()])
        head = result["layers"][0]["heads"][h]
        assert head["entropy"] == pytest.approx(float(torch.cat(entropies).mean()), rel=1e-5)
        assert head["attention_distance"] == pytest.approx(float(torch.cat(distances).mean()), rel=1e-5)


def test_timm_attention_with_qk_norm_against_a_dense_computation():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3, qk_norm=True, depth=1
    )
    for p in model.parameters():
        p.data.normal_(0, 0.5)  # spiky attention, so that a wrong scale or norm shows
    x = torch.randn(2, 3, 32, 32)
    result = analyze_model(model, [x], AnalyzeConfig(queries=64))
    attn, seen = model.blocks[0].attn, {}
    handle = attn.register_forward_hook(lambda mod, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        xi = seen["x"]
        q, k, _ = attn.qkv(xi).reshape(2, 17, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dense = ((attn.q_norm(q) * attn.scale) @ attn.k_norm(k).transpose(-2, -1)).softmax(-1)
    for h in range(attn.num_heads):
        assert result["layers"][0]["heads"][h]["entropy"] == pytest.approx(float(row_entropy(dense[:, h]).mean()))


def test_timm_own_attention_is_measured_with_its_cls_token():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3)
    assert attention_layers(model)
    result = analyze_model(model, [torch.randn(2, 3, 32, 32)], AnalyzeConfig(queries=8))
    layer = result["layers"][0]
    assert layer["kind"] == "softmax" and layer["tokens"] == 17 and layer["grid"] == [4, 4]


def test_a_model_without_attention_is_an_error():
    with pytest.raises(ValueError, match="no attention layer"):
        analyze_model(nn.Linear(3, 3), [torch.randn(1, 3)])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="queries"):
        AnalyzeConfig(queries=0)
    with pytest.raises(ValueError, match="topk_fraction"):
        AnalyzeConfig(topk_fraction=1.5)
    with pytest.raises(ValueError, match="fractions"):
        AnalyzeConfig(query_points=((0.5, 2.0),))


# -- the command ---------------------------------------------------------------------------------
def _write_pngs(folder, n=3, size=28):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_analyze_command_on_a_model_with_image_files(tmp_path, capsys):
    images = _write_pngs(tmp_path / "imgs")
    out = tmp_path / "out"
    rc = main(
        ["analyze", "--model", "vit_tiny_patch16_224", "--attention", "mirror", "--image-size", "32",
         "--images", str(images), "--queries", "16", "--out", str(out), "--threads", "1"]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "analysis.json").read_text())
    assert len(data["layers"]) == 12 and data["layers"][0]["inputs"] == 3
    assert data["layers"][0]["truncation"] == "negative half"
    assert "random weights" in data["header"] and "3 image(s)" in data["header"]
    for name in ("summary.md", "attention_maps.png", "pca.png", "measures.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "| blocks.11.attn |" in (out / "summary.md").read_text()
    assert "12 layers analysed" in capsys.readouterr().out
    assert main(["analyze", "--model", "vit_tiny_patch16_224", "--out", str(out)]) == 2  # would overwrite


def test_analyze_command_errors(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "o")]) == 2
    assert "either a run" in capsys.readouterr().err
    assert main(["analyze", "--model", "vit", "--in-chans", "4", "--out", str(tmp_path / "o")]) == 2
    assert "--in-chans must be 1" in capsys.readouterr().err
    garbage = tmp_path / "w.pt"
    garbage.write_bytes(b"not a checkpoint")
    args = ["analyze", "--model", "vit_tiny_patch16_224", "--image-size", "32", "--weights", str(garbage)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "cannot read weights" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["analyze", "--model", "vit", "--query-points", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "row,col" in capsys.readouterr().err


@needs_fashion_mnist
def test_analyze_command_on_a_trained_run(tmp_path):
    run = tmp_path / "run"
    assert main(
        ["train", "--attention", "mirror", "--epochs", "1", "--train-subset", "64", "--eval-subset", "32",
         "--embed-dim", "32", "--depth", "2", "--patch-size", "7", "--batch-size", "16", "--threads", "1",
         "--no-progress", "--out", str(run)]
    ) == 0  # fmt: skip
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--num-images", "4", "--out", str(out), "--no-figures"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    assert "attention mirror" in data["header"] and "first 4 evaluation images" in data["header"]
    assert data["layers"][1]["inputs"] == 4 and not (out / "pca.png").exists()


def _comparison_rows():
    def row(name, seed, score, discarded):
        mean = dict.fromkeys(("entropy", "effective_rank"), 1.0) | {"discarded_energy_q": discarded}
        return {"attention": name, "seed": seed, "score": score, "score_label": "top-1 %", "mean": mean}

    return [row("a", 0, 70.0, 0.5), row("a", 1, 72.0, 0.3), row("b", 0, 60.0, 0.6), row("c", 0, 80.0, 0.1)]


def test_comparison_table_sets_measures_beside_scores():
    from mirrorla.diagnostics.runs import comparison_table

    rows = _comparison_rows()
    markdown, data = comparison_table(rows)
    assert data["attentions"]["a"]["score"] == 71.0 and data["attentions"]["a"]["discarded_energy_q"] == 0.4
    assert data["attentions"]["a"]["seeds"] == [0, 1]
    # less discarded energy ↔ higher score on every row: ρ = −1; a constant measure has no ranking
    assert data["correlation_with_score"]["discarded_energy_q"]["spearman"] == pytest.approx(-1.0)
    assert data["correlation_with_score"]["entropy"]["spearman"] is None
    assert "| a | 0,1 | 71.00 |" in markdown and "dead_dims_q" not in markdown  # no column without numbers


def test_comparison_figure_has_a_panel_per_correlated_measure(tmp_path):
    from mirrorla.diagnostics.report import write_comparison_figure
    from mirrorla.diagnostics.runs import comparison_table

    rows = _comparison_rows()
    data = comparison_table(rows)[1]
    path = write_comparison_figure(rows, data, tmp_path / "comparison.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no measure has a rank correlation"):
        write_comparison_figure(rows[:2], {**data, "correlation_with_score": {}}, tmp_path / "none.png")


@needs_fashion_mnist
def test_analyze_command_on_a_comparison(tmp_path, capsys):
    cmp = tmp_path / "cmp"
    assert main(
        ["compare", "--attentions", "linear_relu,mirror_block,softmax", "--seeds", "0", "--epochs", "1",
         "--train-subset", "64", "--eval-subset", "32", "--embed-dim", "32", "--depth", "1", "--patch-size", "7",
         "--batch-size", "16", "--jobs", "1", "--threads", "1", "--no-progress", "--throughput-rounds", "1",
         "--throughput-iters", "1", "--out", str(cmp)]
    ) == 0  # fmt: skip
    out = tmp_path / "an"
    assert main(["analyze", str(cmp), "--num-images", "2", "--queries", "8", "--no-figures", "--out", str(out)]) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert list(data["attentions"]) == ["linear_relu", "mirror_block", "softmax"]  # the comparison's order
    results = json.loads((cmp / "results.json").read_text())["methods"]
    for name, entry in data["attentions"].items():
        assert entry["score"] == results[name]["runs"]["0"]["final_top1"]
        assert (out / f"{name}-seed0" / "analysis.json").is_file()
    assert data["attentions"]["softmax"]["discarded_energy_q"] is None
    assert data["correlation_with_score"]["entropy"]["attentions"] == 3
    assert "3 runs analysed" in capsys.readouterr().out
    assert not (out / "comparison.png").exists()
    figs = tmp_path / "figs"
    assert main(["analyze", str(cmp), "--num-images", "1", "--queries", "8", "--out", str(figs)]) == 0
    assert (figs / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figs / "mirror_block-seed0" / "pca.png").is_file() and "comparison.png" in capsys.readouterr().out


def test_analyze_command_on_a_long_range_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(
        ["lra", "train", "--dataset", "listops", "--train-subset", "32", "--eval-subset", "16", "--epochs", "1",
         "--batch-size", "8", "--attention", "mirror", "--threads", "1", "--no-progress", "--out", str(run)]
    ) == 0  # fmt: skip
    out = tmp_path / "an"
    assert main(["analyze", str(run), "--num-images", "3", "--queries", "16", "--no-figures", "--out", str(out)]) == 0
    data = json.loads((out / "analysis.json").read_text())
    assert "long_range" in data["header"] and "first 3 evaluation sequences" in data["header"]
    layer = data["layers"][0]
    assert layer["inputs"] == 3 and layer["grid"][0] == 1  # a 1-D sequence reaches the attention as (1, L)
    assert layer["truncation"] == "negative half" and 0 < layer["mean"]["entropy_norm"] <= 1
