"""STILL attention math: chunk form, decode loop and quadratic reference agree; NP-Map; selection; config."""

from __future__ import annotations

import math

import pytest
import torch

from mirrorla.still.attention import still_attention, still_decode_step, window_valid
from mirrorla.still.config import StillConfig
from mirrorla.still.naive import naive_saliency, naive_selection, naive_still_attention
from mirrorla.still.np_map import NPMap, np_map
from mirrorla.still.saliency import saliency_scores, select_topk

B, H, D, F_D = 2, 3, 8, 6
L, K = 8, 2


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).double().pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_inputs(N: int, dtype=torch.float32, seed: int = 0, linear: bool = True, gate: bool = True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=dtype) * 1.5 for _ in range(3))
    torch.manual_seed(seed)
    fmap = NPMap(H, D, F_D).to(dtype)
    phi_q, phi_k = (fmap(q), fmap(k)) if linear else (None, None)
    gt = torch.rand(B, H, N, D, generator=g, dtype=dtype) if gate else None
    return q, k, v, phi_q, phi_k, gt


def decode_loop(q, k, v, phi_q, phi_k, gate, state=None, start=0, **kw):
    outs = []
    for t in range(start, q.shape[2]):
        o, state = still_decode_step(
            state,
            q[:, :, t],
            k[:, :, t],
            v[:, :, t],
            None if phi_q is None else phi_q[:, :, t],
            None if phi_k is None else phi_k[:, :, t],
            None if gate is None else gate[:, :, t],
            **kw,
        )
        outs.append(o)
    return torch.stack(outs, 2), state


# N covers: shorter than one chunk, exactly one, one more, non-multiples, several chunks of old tokens.
@pytest.mark.parametrize("N", [1, 5, 9, 45])
@pytest.mark.parametrize("variant", ["still", "no_linear", "topk0", "no_gate"])
def test_chunk_decode_reference_agree(N, variant):
    linear = variant != "no_linear"
    topk = 0 if variant == "topk0" else K
    q, k, v, phi_q, phi_k, gate = make_inputs(N, linear=linear, gate=variant != "no_gate")
    kw = dict(chunk_size=L, topk=topk)
    ref = naive_still_attention(q, k, v, phi_q, phi_k, gate, **kw)
    out = still_attention(q, k, v, phi_q, phi_k, gate, **kw)
    dec, _ = decode_loop(q, k, v, phi_q, phi_k, gate, **kw)
    assert out.shape == ref.shape == dec.shape == (B, H, N, D)
    # fp32 tolerances of docs/methods.md §1.2 (1e-5) and §7.6 (decode vs prefill 1e-4).
    assert rel_rms(out, ref) <= 1e-5
    assert rel_rms(dec, ref) <= 1e-5
    assert rel_rms(dec, out) <= 1e-4


@pytest.mark.parametrize("N,split", [(23, 1), (40, 17), (9, 8)])
def test_prefill_then_decode_matches(N, split):
    q, k, v, phi_q, phi_k, gate = make_inputs(N, seed=1)
    kw = dict(chunk_size=L, topk=K)
    ref = naive_still_attention(q, k, v, phi_q, phi_k, gate, **kw)
    head, state = still_attention(
        q[:, :, :split], k[:, :, :split], v[:, :, :split], phi_q[:, :, :split], phi_k[:, :, :split],
        gate[:, :, :split], return_state=True, **kw,
    )  # fmt: skip
    assert state.n_seen == split
    tail, state = decode_loop(q, k, v, phi_q, phi_k, gate, state=state, start=split, **kw)
    assert state.n_seen == N
    assert rel_rms(torch.cat([head, tail], 2), ref) <= 1e-5


@pytest.mark.parametrize("N", [9, 45])
def test_key_padding(N):
    """Q5: padding is removed from the row: in no window, never selected, in no branch, reference matches."""
    q, k, v, phi_q, phi_k, gate = make_inputs(N, seed=4)
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[0, :L] = False  # left padding by one chunk
    keep[1, 3] = False  # a hole
    kw = dict(chunk_size=L, topk=K)
    ref, (exact, linear, selected) = naive_still_attention(
        q, k, v, phi_q, phi_k, gate, key_padding_mask=keep, return_masks=True, **kw
    )
    out, state = still_attention(q, k, v, phi_q, phi_k, gate, key_padding_mask=keep, return_state=True, **kw)
    assert torch.isfinite(out).all() and not out[~keep[:, None, :].expand(B, H, N)].any()  # padded rows give 0
    assert rel_rms(out, ref) <= 1e-5
    assert not (exact | linear)[..., ~keep[0]][0].any()  # padded keys of sample 0 are in no branch
    assert not selected[1, :, 3].any()
    assert state.length.tolist() == keep.sum(1).tolist() and state.n_seen == N
    # Decoding real tokens after a padded prefill continues the reference.
    split = 12 if N > 12 else N - 1
    head = still_attention(
        *(t[:, :, :split] for t in (q, k, v, phi_q, phi_k, gate)), key_padding_mask=keep[:, :split],
        return_state=True, **kw,
    )  # fmt: skip
    tail, _ = decode_loop(q, k, v, phi_q, phi_k, gate, state=head[1], start=split, **kw)
    assert rel_rms(tail, ref[:, :, split:]) <= 1e-5


def make_rows(n_real: list[int], n_new: int, seed: int = 0):
    """One sequence per row (lengths n_real + n_new), as (B, H, ·, ·) tensors per row: q, k, v, φq, φk, g."""
    torch.manual_seed(seed)
    fmap = NPMap(H, D, F_D)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in n_real:
        q, k, v = (torch.randn(1, H, n + n_new, D, generator=g) * 1.5 for _ in range(3))
        rows.append((q, k, v, fmap(q), fmap(k), torch.rand(1, H, n + n_new, D, generator=g)))
    return rows


@pytest.mark.parametrize("pattern", ["left", "right", "holes"])
def test_padding_equals_rows_alone(pattern):
    """Any amount of padding (0, 1, 3, L, 2L+1 tokens): every row equals the row alone, in prefill and decoding.

    Rows end at different chunk phases, so the decode steps roll and route at different steps per row.
    Tolerance: relative RMS 1e-5 in fp32 (the same sums, taken in a different order and batch shape).
    """
    pads = [0, 1, 3, L, 2 * L + 1]
    N, n_new = 40, 19
    rows = make_rows([N - p for p in pads], n_new)
    kw = dict(chunk_size=L, topk=K)
    batch, keep = [], torch.zeros(len(pads), N, dtype=torch.bool)
    for b, (p, row) in enumerate(zip(pads, rows, strict=True)):
        real = {"left": torch.arange(p, N), "right": torch.arange(0, N - p)}.get(pattern)
        if real is None:  # holes spread over the row
            real = torch.linspace(0, N - 1, N - p).round().long()
        keep[b, real] = True
        prompt = [t[:, :, : N - p] for t in row]
        full = [torch.zeros(1, H, N, t.shape[-1]).index_copy(2, real, t) for t in prompt]
        new = [t[:, :, N - p :] for t in row]
        batch.append((full, new))
    prompt = [torch.cat([full[i] for full, _ in batch]) for i in range(6)]
    new = [torch.cat([new[i] for _, new in batch]) for i in range(6)]
    out, state = still_attention(*prompt, key_padding_mask=keep, return_state=True, **kw)
    tail, state = decode_loop(
        *(torch.cat([p, n], 2) for p, n in zip(prompt, new, strict=True)), state=state, start=N, **kw
    )
    for b, row in enumerate(rows):
        alone = still_attention(*row, **kw)  # prompt and new tokens in one prefill
        n_real = N - pads[b]
        assert rel_rms(out[b : b + 1][:, :, keep[b]], alone[:, :, :n_real]) <= 1e-5, (b, pads[b])
        assert rel_rms(tail[b : b + 1], alone[:, :, n_real:]) <= 1e-5, (b, pads[b])
    assert rel_rms(out, naive_still_attention(*prompt, key_padding_mask=keep, **kw)) <= 1e-5
    assert state.length.tolist() == [N - p + n_new for p in pads]


def test_decode_state_is_sparse():
    """Cache: K of every L old tokens, 2L raw tokens, and a fixed-size linear state (§7.6)."""
    N = 45
    q, k, v, phi_q, phi_k, gate = make_inputs(N)
    _, state = still_attention(q, k, v, phi_q, phi_k, gate, chunk_size=L, topk=K, return_state=True)
    n_chunks = math.ceil(N / L)
    assert state.sel_k.shape == (B, H, (n_chunks - 2) * K, D)
    assert state.win_k.shape == (B, H, 2 * L, D) and state.length.tolist() == [N] * B
    assert window_valid(state.length, L).sum(1).tolist() == [L + N - (n_chunks - 1) * L] * B
    assert state.kv.shape == (B, H, 2 * F_D, D) and state.z.shape == (B, H, 2 * F_D)


def test_float64_reference_exact():
    q, k, v, phi_q, phi_k, gate = make_inputs(30, dtype=torch.float64)
    kw = dict(chunk_size=L, topk=K)
    ref = naive_still_attention(q, k, v, phi_q, phi_k, gate, **kw)
    assert rel_rms(still_attention(q, k, v, phi_q, phi_k, gate, **kw), ref) <= 1e-12


def test_all_selected_without_linear_is_softmax():
    q, k, v, *_ = make_inputs(29)
    out = still_attention(q, k, v, None, None, None, chunk_size=L, topk=L)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_rms(out, ref) <= 1e-5


def test_causality():
    """Perturbing token t+1 (q, k, v, features) never changes outputs ≤ t, selection included."""
    N = 40
    q, k, v, phi_q, phi_k, gate = make_inputs(N)
    kw = dict(chunk_size=L, topk=K)
    base = still_attention(q, k, v, phi_q, phi_k, gate, **kw)
    for t in (0, 7, 8, 20, 38):
        tensors = [x.clone() for x in (q, k, v, phi_q, phi_k, gate)]
        for x in tensors:
            x[:, :, t + 1 :] = x[:, :, t + 1 :] * 3.0 + 1.0
        out = still_attention(*tensors, **kw)
        assert torch.equal(out[:, :, : t + 1], base[:, :, : t + 1]), t
        assert not torch.allclose(out[:, :, t + 1 :], base[:, :, t + 1 :])


def test_selection_is_topk_per_chunk_per_head():
    N = 43
    q, k, v, phi_q, phi_k, gate = make_inputs(N, seed=3)
    scores = saliency_scores(q, k, L)
    assert rel_rms(scores, naive_saliency(q, k, L)) <= 1e-5
    selected = naive_selection(scores, L, K)
    n_full = N // L
    per_chunk = selected[:, :, : n_full * L].reshape(B, H, n_full, L).sum(-1)
    assert torch.equal(per_chunk, torch.full_like(per_chunk, K))
    assert not selected[:, :, n_full * L :].any()  # the incomplete chunk selects nothing
    # The fast path's exact cache holds exactly those tokens of the chunks that left the window.
    _, state = still_attention(q, k, v, phi_q, phi_k, gate, chunk_size=L, topk=K, return_state=True)
    idx = select_topk(scores[:, :, : n_full * L].reshape(B, H, n_full, L), K)  # (B, H, C, K)
    offsets = (torch.arange(n_full) * L)[None, None, :, None]
    want = k.gather(2, (idx + offsets).flatten(2)[..., None].expand(-1, -1, -1, D))
    n_left = math.ceil(N / L) - 2
    assert torch.equal(state.sel_k, want[:, :, : n_left * K])
    # Heads select independently: not every head picks the same positions.
    assert not (idx[:, :1] == idx).all()


def test_saliency_ranks_by_local_self_weight():
    """[Analysis] §7.3: Score is increasing in the token's self weight a_tt within its window."""
    N = 32
    q, k, *_ = make_inputs(N, dtype=torch.float64, seed=5)
    scores = saliency_scores(q, k, L)
    logits = q @ k.transpose(-2, -1) / math.sqrt(D)
    t = torch.arange(N)
    window = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - L)
    self_weight = torch.softmax(logits.masked_fill(~window, float("-inf")), -1).diagonal(dim1=-2, dim2=-1)
    rows = slice(1, None)  # t = 0 has no other key: its a_tt = 1 trivially
    order_s = scores[..., rows].argsort(-1)
    order_a = self_weight[..., rows].argsort(-1)
    assert (order_s == order_a).float().mean() > 0.95


def test_np_map_gradcheck_and_properties():
    torch.manual_seed(0)
    fmap = NPMap(2, 4, 3).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, u, w: np_map(x, u, w), (x, fmap.householder, fmap.weight), fast_mode=True)
    phi = fmap(x)
    assert phi.shape == (1, 2, 5, 6) and (phi > 0).all()
    # Each half is a softmax over the feature axis; the pair sums to 2.
    assert torch.allclose(phi.sum(-1), torch.full((1, 2, 5), 2.0, dtype=torch.float64))
    # Norm preservation: scaling x scales ũ, so a larger x makes the features spikier (lower entropy).
    ent = lambda p: -(p * p.log()).sum(-1)
    assert (ent(fmap(x * 4)[..., :3]) < ent(phi[..., :3])).all()


def test_low_precision_inputs_finite():
    q, k, v, phi_q, phi_k, gate = make_inputs(30)
    out = still_attention(
        (q * 30).bfloat16(), (k * 30).bfloat16(), v.bfloat16(), phi_q, phi_k, gate.bfloat16(), chunk_size=L, topk=K
    )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_config_validation():
    assert StillConfig().chunk_size == 64 and StillConfig().topk == 4 and StillConfig().compat == "clean"
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        StillConfig(chunk_size=0)
    with pytest.raises(ValueError, match="topk must be in"):
        StillConfig(chunk_size=8, topk=9)
    with pytest.raises(TypeError, match="unknown STILL option"):
        StillConfig.from_kwargs(chunk=8)
    with pytest.raises(NotImplementedError, match="official"):
        StillConfig(compat="official")
    with pytest.raises(ValueError, match="compat"):
        StillConfig(compat="fast")
    with pytest.raises(ValueError, match="topk"):
        still_attention(*make_inputs(4)[:3], None, None, chunk_size=4, topk=5)
