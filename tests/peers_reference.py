"""Independent quadratic references for the peer-method tests (FLatten, PolaFormer, NaLaFormer).

Everything is written from docs/methods.md §3–5 directly in float64 from the module's parameters: the
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
