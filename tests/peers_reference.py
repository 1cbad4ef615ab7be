"""Independent quadratic references for the peer-method tests (FLatten, PolaFormer, NaLaFormer, MLLA, RALA,
MALA, Agent attention).

Everything is written from docs/methods.md §3–5 and §10–13 directly in float64 from the module's parameters: the
N×N score matrix is built explicitly and normalised explicitly; depthwise convolutions are sums of
shifted images; RoPE uses complex numbers (relative-phase form), not the library's rotation code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def heads(t, h):
    B, N, C = t.shape
    return t.view(B, N, h, C // h).transpose(1, 2)


def merge(t):
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


def depthwise(img, weight, bias):
    """Depthwise 'same' convolution as a sum of shifted images. img (B, C, H, W), weight (C, 1, k, k)."""
    B, C, H, W = img.shape
    k = weight.shape[-1]
    p = k // 2
    padded = F.pad(img, (p, p, p, p))
    out = bias.view(1, C, 1, 1).expand(B, C, H, W).clone()
    for i in range(k):
        for j in range(k):
            out = out + padded[:, :, i : i + H, j : j + W] * weight[:, 0, i, j].view(1, C, 1, 1)
    return out


def dwc_shared(v, conv, hw, prefix=0):
    """FLatten/PolaFormer DWC: v (B, h, N, d), one d-channel kernel for all heads → (B, N, C), prefix rows 0."""
    B, h, N, d = v.shape
    H, W = hw
    img = v[:, :, prefix:].transpose(-1, -2).reshape(B * h, d, H, W)
    out = depthwise(img, conv.weight.double(), conv.bias.double()).reshape(B, h, d, H * W)
    out = out.permute(0, 3, 1, 2).reshape(B, H * W, h * d)
    return F.pad(out, (0, 0, prefix, 0))


def dwc_per_channel(v_tokens, conv, hw, prefix=0):
    """NaLaFormer LePE: v (B, N, C) as an image (B, C, H, W), one kernel per channel → (B, N, C)."""
    B, N, C = v_tokens.shape
    H, W = hw
    img = v_tokens[:, prefix:].transpose(1, 2).reshape(B, C, H, W)
    out = depthwise(img, conv.weight.double(), conv.bias.double()).flatten(2).transpose(1, 2)
    return F.pad(out, (0, 0, prefix, 0))


def position_table(m, hw):
    """P for the runtime grid: the table itself at its construction grid, else a bicubic resize."""
    pe = m.pos_embed.weight.double()
    if tuple(hw) == m.pos_embed.grid:
        return pe
    C = pe.shape[-1]
    img = pe.transpose(1, 2).reshape(1, C, *m.pos_embed.grid)
    return F.interpolate(img, size=tuple(hw), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)


def normalised(a, v, eps, n_keys):
    """Mean-form normalisation written as the sum form: A V / (A·1 + M·ε)."""
    return (a @ v) / (a.sum(-1, keepdim=True) + n_keys * eps)


def key_count(kpm, N):
    if kpm is None:
        return float(N)
    return kpm.sum(-1).double().clamp_min(1)[:, None, None, None]


def mask_columns(a, kpm):
    return a if kpm is None else a * kpm[:, None, None, :].double()


def naive_flatten(m, x, hw, kpm=None):
    x = x.double()
    B, N, C = x.shape
    h, P = m.num_heads, m.num_prefix_tokens
    q, k, v = F.linear(x, m.qkv.weight.double(), m.qkv.bias.double()).chunk(3, dim=-1)
    if m.pos_embed is not None:
        k = k + F.pad(position_table(m, hw), (0, 0, P, 0))
    if kpm is not None:
        v = v * kpm[..., None].double()
    s = F.softplus(m.feature_map.scale.double())  # (1, 1, C)
    p = m.feature_map.focusing_factor

    def focus(t):
        t = (F.relu(t) + 1e-6) / s
        if m.feature_map.norm_scope == "full":
            return t.norm(dim=-1, keepdim=True) * t**p / (t**p).norm(dim=-1, keepdim=True)
        th = heads(t, h)
        return merge(th.norm(dim=-1, keepdim=True) * th**p / (th**p).norm(dim=-1, keepdim=True))

    fq, fk, vh = heads(focus(q), h), heads(focus(k), h), heads(v, h)
    a = mask_columns(fq @ fk.transpose(-1, -2), kpm)
    o = merge(normalised(a, vh, 1e-6, key_count(kpm, N)))
    if m.dwc is not None:
        o = o + dwc_shared(vh, m.dwc.conv, hw, P)
    return F.linear(o, m.proj.weight.double(), m.proj.bias.double())


def naive_pola(m, x, hw, kpm=None):
    x = x.double()
    B, N, C = x.shape
    h, P = m.num_heads, m.num_prefix_tokens
    parts = F.linear(x, m.qkv.weight.double(), m.qkv.bias.double()).chunk(4 if m.gate else 3, dim=-1)
    q, k, v = parts[:3]
    if m.pos_embed is not None:
        k = k + F.pad(position_table(m, hw), (0, 0, P, 0))
    if kpm is not None:
        v = v * kpm[..., None].double()
    s = F.softplus(m.feature_map.scale.double())
    q, k, vh = heads(q / s, h), heads(k / s, h), heads(v, h)
    pw = 1 + m.feature_map.alpha * torch.sigmoid(m.feature_map.power.double())  # (1, h, 1, d)
    qp, qn, kp, kn = F.relu(q) ** pw, F.relu(-q) ** pw, F.relu(k) ** pw, F.relu(-k) ** pw
    a_sim = mask_columns(qp @ kp.transpose(-1, -2) + qn @ kn.transpose(-1, -2), kpm)  # same sign
    a_opp = mask_columns(qn @ kp.transpose(-1, -2) + qp @ kn.transpose(-1, -2), kpm)  # opposite sign
    d = vh.shape[-1]
    half = d - d // 2
    n = key_count(kpm, N)
    o_sim = normalised(a_sim, vh[..., :half], 1e-6, n)
    o_opp = normalised(a_opp, vh[..., half:], 1e-6, n)
    if m.stream_gates:
        o_sim = o_sim * m.gate_sim.double()[None, :, None, :]
        o_opp = o_opp * m.gate_opp.double()[None, :, None, :]
    o = merge(torch.cat([o_sim, o_opp], dim=-1))
    if m.dwc is not None:
        o = o + dwc_shared(vh, m.dwc.conv, hw, P)
    if m.gate:
        o = o * parts[3]
    return F.linear(o, m.proj.weight.double(), m.proj.bias.double())


def rope_phases(hw, d, prefix=0):
    """β (N, d/2) of docs/methods.md §5.1 written from the formula: ω_i = 10000^(−i/(d/4 − 1)).

    The official table is float32 (NaLaFormer ``NALA.py``, ``RoPE.__init__``:
    ``1.0 / (10000 ** torch.linspace(0, 1, d // 4))``); the reference takes those float32 values of ω,
    so float64 comparisons with the layer see the same angles bit for bit.
    """
    H, W = hw
    nq = d // 4
    omega = (1.0 / (10000 ** torch.linspace(0, 1, nq, dtype=torch.float32))).double()
    exact = torch.tensor([10000.0 ** (-(i / (nq - 1))) if nq > 1 else 1.0 for i in range(nq)], dtype=torch.float64)
    assert torch.allclose(omega, exact, rtol=1e-6, atol=0)  # the float32 table is the formula, rounded
    rows = torch.tensor([r for r in range(H) for _ in range(W)], dtype=torch.float64)
    cols = torch.tensor([c for _ in range(H) for c in range(W)], dtype=torch.float64)
    beta = torch.cat([rows[:, None] * omega, cols[:, None] * omega], dim=-1)
    return torch.cat([torch.zeros(prefix, d // 2, dtype=torch.float64), beta])


def rotated_scores(fq, fk, beta, d):
    """Σ over d-chunks and channel pairs of ⟨R_βi a_i, R_βj b_j⟩ = Re(z_i conj(w_j) e^{i(βi − βj)})."""
    B, h, N, F2 = fq.shape
    zq = torch.complex(fq[..., 0::2], fq[..., 1::2]).reshape(B, h, N, F2 // d, d // 2)
    zk = torch.complex(fk[..., 0::2], fk[..., 1::2]).reshape(B, h, N, F2 // d, d // 2)
    phase = torch.exp(1j * beta.to(torch.complex128))  # (N, d/2)
    zq = (zq * phase[:, None, :]).reshape(B, h, N, -1)
    zk = (zk * phase[:, None, :]).reshape(B, h, N, -1)
    return (zq @ zk.conj().transpose(-1, -2)).real


def nala_features(m, q, k):
    """φq, φk (B, h, N, 2d) written from docs/methods.md §5.1 / §5.2 (float64)."""
    fm = m.feature_map
    r = q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    p = 3 * (0.5 + torch.tanh(r))
    if fm.form == "code":
        fq = torch.cat([(F.relu(q) / r) ** p, (F.relu(-q) / r) ** p], dim=-1)
        fk = torch.cat([F.relu(k) ** 3, F.relu(-k) ** 3], dim=-1)
        return fq, fk
    a = fm.phase_scale
    mq, mk = (q.abs() / r) ** p, k.abs() ** 3
    tq = math.pi / 4 * torch.tanh(a * q / r)
    tk = math.pi / 4 * torch.tanh(a * k / k.norm(dim=-1, keepdim=True))
    return (
        torch.cat([mq * torch.cos(tq), mq * torch.sin(tq)], dim=-1),
        torch.cat([mk * torch.cos(tk), mk * torch.sin(tk)], dim=-1),
    )


def naive_nala(m, x, hw, kpm=None):
    x = x.double()
    B, N, C = x.shape
    h, P, d = m.num_heads, m.num_prefix_tokens, m.head_dim
    q, k, v, g = F.linear(x, m.qkv.weight.double(), m.qkv.bias.double()).chunk(4, dim=-1)
    if kpm is not None:
        v = v * kpm[..., None].double()
    q, k, vh = heads(q, h), heads(k, h), heads(v, h)
    fq, fk = nala_features(m, q, k)
    den = mask_columns(fq @ fk.transpose(-1, -2), kpm).sum(-1, keepdim=True)  # un-rotated
    if m.rope is not None:
        a_num = rotated_scores(fq, fk, rope_phases(hw, d, P), d)
    else:
        a_num = fq @ fk.transpose(-1, -2)
    a_num = mask_columns(a_num, kpm)
    n = key_count(kpm, N)
    o = merge((a_num @ vh) / n / (den / n + 1e-6))
    if m.dwc is not None:
        o = o + dwc_per_channel(v, m.dwc.conv, hw, P)
    ln = m.out_norm
    o = F.layer_norm(o, (C,), ln.weight.double(), ln.bias.double(), ln.eps)
    o = o * (g * torch.sigmoid(g))
    return F.linear(o, m.proj.weight.double(), m.proj.bias.double())


# -- MLLA, RALA, MALA, Agent attention (docs/methods.md §10–13) ---------------------------------------


def elu1(t):
    # ELU(t) + 1 written out, as the sources evaluate it (expm1, then + 1: for t ≪ 0 this rounds differently
    # from exp(t) at the 1e-11 level in float64, which the fp64 gradient comparisons would see).
    return torch.where(t > 0, t, torch.expm1(t)) + 1


def phase_scores(fq, fk, phase):
    """Σ over channel pairs of ⟨R_i a_i, R_j b_j⟩ = Re(Σ z_i conj(w_j) e^{i(β_i − β_j)}); phase (H, N, d/2) complex."""
    zq = torch.complex(fq[..., 0::2], fq[..., 1::2]) * phase
    zk = torch.complex(fk[..., 0::2], fk[..., 1::2]) * phase
    return (zq @ zk.conj().transpose(-1, -2)).real


def mlla_phases(hw, h, d, prefix=0):
    """e^{iβ} (h, N, d/2) of MLLA's RoPE over C = h·d channels (docs/methods.md §10.1): pair p < C/4 turns by
    row·θ_p, pair p ≥ C/4 by col·θ_{p−C/4}, θ_k = 10000^(−k/(C/4)). The official table (angles, cos and
    sin) is float32; the reference evaluates it in float32 too, from the formula."""
    H, W = hw
    c4 = h * d // 4
    # [Code] ``1 / (base ** (torch.arange(k_max) / k_max))`` in float32 arithmetic; it is the formula, rounded.
    theta = 1.0 / (10000 ** (torch.arange(c4, dtype=torch.float32) / c4))
    exact = torch.tensor([10000.0 ** (-(i / c4)) for i in range(c4)], dtype=torch.float64)
    assert torch.allclose(theta.double(), exact, rtol=1e-6, atol=0)
    rows = torch.tensor([r for r in range(H) for _ in range(W)], dtype=torch.float32)
    cols = torch.tensor([c for _ in range(H) for c in range(W)], dtype=torch.float32)
    beta = torch.cat([rows[:, None] * theta, cols[:, None] * theta], dim=-1)  # (HW, C/2) float32
    beta = torch.cat([torch.zeros(prefix, 2 * c4), beta])
    phase = torch.complex(beta.cos().double(), beta.sin().double())
    return phase.reshape(-1, h, d // 2).transpose(0, 1)


def axial_phases(hw, d, prefix=0):
    """e^{iβ} (1, N, d/2) of the per-head axial RoPE (NaLaFormer, RALA, MALA: docs/methods.md §5.1)."""
    return torch.exp(1j * rope_phases(hw, d, prefix).to(torch.complex128))[None]


def rotary_outputs(fq, fk, vh, phase, kpm, n, eps, path, d):
    """The rotated-numerator value paths of docs/methods.md §10–12 as explicit N×N matrices."""
    a_num = fq @ fk.transpose(-1, -2) if phase is None else phase_scores(fq, fk, phase)
    a_num = mask_columns(a_num, kpm)
    den = mask_columns(fq @ fk.transpose(-1, -2), kpm).sum(-1, keepdim=True) / n  # φq·mean φk
    num = (a_num @ vh) / n
    if path == "mean":
        return num / (den + eps)
    s = d**-0.5
    v_mean = vh.sum(-2, keepdim=True) / n
    return s * num * (1 + 1 / (s * den + eps)) - s * den * v_mean


def naive_rala(m, x, hw, kpm=None, path="mean"):
    x = x.double()
    B, N, C = x.shape
    h, P, d = m.num_heads, m.num_prefix_tokens, m.head_dim
    q, k, v, o = F.linear(x, m.qkv.weight.double(), m.qkv.bias.double()).chunk(4, dim=-1)
    if kpm is not None:
        v = v * kpm[..., None].double()
    fq, fk, vh = elu1(heads(q, h)), elu1(heads(k, h)), heads(v, h)
    n = key_count(kpm, N)
    if path == "mean" and m.feature_map.rank_augment:
        keep = torch.ones(B, N, dtype=torch.float64) if kpm is None else kpm.double()
        q_mean = (fq * keep[:, None, :, None]).sum(-2, keepdim=True) / n
        logits = (q_mean @ fk.transpose(-1, -2)) / math.sqrt(d)  # (B, h, 1, N)
        weights = torch.exp(logits) * keep[:, None, None, :]
        weights = weights / weights.sum(-1, keepdim=True) * n
        fk = fk * weights.transpose(-1, -2)
    phase = axial_phases(hw, d, P) if m.rope is not None else None
    out = merge(rotary_outputs(fq, fk, vh, phase, kpm, n, 1e-6, path, d))
    if m.dwc is not None:
        out = out + dwc_per_channel(v, m.dwc.conv, hw, P)
    return F.linear(out * o, m.proj.weight.double(), m.proj.bias.double())


def naive_mala(m, x, hw, kpm=None):
    return naive_rala(m, x, hw, kpm, path="magnitude")


def naive_mlla(m, x, hw, kpm=None):
    x = x.double()
    B, N, C = x.shape
    h, P, d = m.num_heads, m.num_prefix_tokens, m.head_dim
    g = F.linear(x, m.act_proj.weight.double(), m.act_proj.bias.double())
    u = F.linear(x, m.in_proj.weight.double(), m.in_proj.bias.double())
    if kpm is not None:
        u = u * kpm[..., None].double()
    conv = dwc_per_channel(u, m.in_conv.conv, hw, P)
    u = torch.cat([u[:, :P], conv[:, P:]], dim=1)  # prefix tokens skip the input conv
    u = u * torch.sigmoid(u)
    q, k = F.linear(u, m.qkv.weight.double(), m.qkv.bias.double()).chunk(2, dim=-1)
    v = u if kpm is None else u * kpm[..., None].double()
    fq, fk, vh = elu1(heads(q, h)), elu1(heads(k, h)), heads(v, h)
    phase = mlla_phases(hw, h, d, P) if m.rope is not None else None
    out = merge(rotary_outputs(fq, fk, vh, phase, kpm, key_count(kpm, N), 1e-6, "mean", d))
    if m.dwc is not None:
        out = out + dwc_per_channel(v, m.dwc.conv, hw, P)
    out = out * (g * torch.sigmoid(g))
    return F.linear(out, m.proj.weight.double(), m.proj.bias.double())


def resize_matrix(n_in, n_out):
    """(n_out, n_in) weights of a linear resize with align_corners=False (source index clamped at 0)."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        w[o, i0] += 1 - lam
        w[o, i1] += lam
    return w


def pool_matrix(n_in, n_out):
    """(n_out, n_in) averaging weights of adaptive average pooling: bin i covers [⌊i·n/s⌋, ⌈(i+1)·n/s⌉)."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        w[i, a:b] = 1.0
    return w


def naive_agent(m, x, hw, kpm=None):
    x = x.double()
    B, N, C = x.shape
    h, P, d, n = m.num_heads, m.num_prefix_tokens, m.head_dim, m.agent_num
    H, W = hw
    s = math.isqrt(n)
    q, k, v = F.linear(x, m.qkv.weight.double(), m.qkv.bias.double()).chunk(3, dim=-1)
    if kpm is not None:
        v = v * kpm[..., None].double()
    qh, kh, vh = heads(q, h), heads(k, h), heads(v, h)
    # Agents: the mean of the (kept) grid queries in each of the s×s bins.
    bins = torch.kron(pool_matrix(H, s), pool_matrix(W, s))  # (n, HW): bin membership
    keep = torch.ones(B, H * W, dtype=torch.float64) if kpm is None else kpm[:, P:].double()
    weights = bins[None] * keep[:, None, :]  # (B, n, HW)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    agents = weights[:, None] @ qh[:, :, P:]  # (B, h, n, d)
    # Position biases from the tables, resized by explicit interpolation matrices.
    rh, rw = resize_matrix(7, H), resize_matrix(7, W)
    an = torch.einsum("yi,xj,hnij->hnyx", rh, rw, m.an_bias.double()).reshape(h, n, H * W)
    na = torch.einsum("yi,xj,hnij->hnyx", rh, rw, m.na_bias.double()).reshape(h, n, H * W)
    Hb, Wb = m.bias_grid
    ah = torch.einsum("yi,hni->hny", resize_matrix(Hb, H), m.ah_bias.double()[0, :, :, :, 0])
    aw = torch.einsum("xj,hnj->hnx", resize_matrix(Wb, W), m.aw_bias.double()[0, :, :, 0, :])
    ha = torch.einsum("yi,hin->hyn", resize_matrix(Hb, H), m.ha_bias.double()[0, :, :, 0, :])
    wa = torch.einsum("xj,hjn->hxn", resize_matrix(Wb, W), m.wa_bias.double()[0, :, 0, :, :])
    kn = an + (ah[:, :, :, None] + aw[:, :, None, :]).reshape(h, n, H * W)
    nk = na.transpose(1, 2) + (ha[:, :, None, :] + wa[:, None, :, :]).reshape(h, H * W, n)
    if P:
        kn = torch.cat([m.ac_bias.double()[0].expand(h, n, P), kn], dim=2)
        nk = torch.cat([m.ca_bias.double()[0].expand(h, P, n), nk], dim=1)
    logits = agents @ kh.transpose(-1, -2) / math.sqrt(d) + kn
    if kpm is not None:
        logits = logits.masked_fill(~kpm[:, None, None, :], float("-inf"))
    agent_v = torch.softmax(logits, -1) @ vh
    out = merge(torch.softmax(qh @ agents.transpose(-1, -2) / math.sqrt(d) + nk, -1) @ agent_v)
    if m.dwc is not None:
        out = out + dwc_per_channel(v, m.dwc.conv, hw, P)
    return F.linear(out, m.proj.weight.double(), m.proj.bias.double())
