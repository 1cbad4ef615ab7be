"""Diagnostics of every attention layer of a model on a set of inputs: the numbers of ``mirrorla analyze``.

Dimension letters: B batch, H heads, N tokens, S sampled queries, M keys (the valid tokens), D head dim,
F feature dim.

Per layer and head, pooled over the inputs (docs/analysis.md defines each number):

- ``entropy`` (nats) of each sampled query's attention row, and ``entropy_norm`` = entropy / log M;
- ``top1_mass`` and ``topk_mass`` (mass on the ⌈topk_fraction·M⌉ largest keys): how spiky the rows are;
- ``attention_distance``: mean grid distance from a query to the keys it attends to (spatial tokens);
- ``effective_rank`` of the whole N×N map: exact for linear attention at any N (low-rank factors),
  exact for softmax up to ``exact_rank_limit`` keys, else estimated from the sampled rows;
- ``discarded_energy_q``/``_k``: share of the energy of the feature map's input that it zeroes;
- ``dead_dims_q``/``_k``: share of feature dimensions never positive on any input;
- ``rank_correlation``: Spearman correlation of q·k and φ(q)·φ(k) over the keys, per query;
- ``empty_rows``: share of queries whose features are all zero (the layer outputs 0 for them);
- ``pca``: the MirrorLA Figure-1 view, PCA of softmax(φ(Q)φ(K)ᵀ/√D) with φ = identity, ReLU and the
  layer's own map (first input, first head): variance share of the first two components, effective rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirrorla.diagnostics.capture import AttentionCapture, attention_layers, capture_attention, skipped_layers
from mirrorla.diagnostics.measures import (
    attention_distance,
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

__all__ = ["AnalyzeConfig", "analyze_model", "HEAD_MEASURES", "PCA_MAPS"]

#: The per-head numbers, in the order tables show them.
HEAD_MEASURES = (
    "entropy",
    "entropy_norm",
    "top1_mass",
    "topk_mass",
    "attention_distance",
    "effective_rank",
    "discarded_energy_q",
    "discarded_energy_k",
    "dead_dims_q",
    "dead_dims_k",
    "rank_correlation",
    "empty_rows",
)
#: The three maps of the PCA view (Figure 1 of MirrorLA).
PCA_MAPS = ("identity", "relu", "own")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Sampling and figure settings of :func:`analyze_model`.

    queries: query rows sampled per input, head and layer (all tokens when fewer).
    topk_fraction: ``topk_mass`` counts the ⌈fraction·M⌉ largest keys.
    exact_rank_limit: softmax maps with at most this many keys get an exact effective rank.
    rank_keys: keys sampled for the rank correlation (all when fewer).
    query_points: (row, col) as fractions of the grid for the attention-map figure.
    dead_tol: a feature is dead when its maximum ≤ dead_tol × the head's largest feature value.
    seed: the sampling seed (the same queries for every layer and head of an input).
    """

    queries: int = 256
    topk_fraction: float = 0.05
    exact_rank_limit: int = 2048
    rank_keys: int = 4096
    query_points: tuple[tuple[float, float], ...] = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75))
    dead_tol: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("queries", "exact_rank_limit", "rank_keys"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        for point in self.query_points:
            if len(point) != 2 or not all(0 <= v <= 1 for v in point):
                raise ValueError(f"query points are (row, col) fractions in [0, 1], got {point!r}")


@dataclass
class _HeadSums:
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, values: Tensor | float) -> None:
        if isinstance(values, Tensor):
            values = values.double().flatten()
            values = values[~values.isnan()]
            total, count = float(values.sum()), values.numel()
        else:
            if math.isnan(values):
                return
            total, count = float(values), 1
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def mean(self, name: str) -> float | None:
        count = self.counts.get(name, 0)
        return self.sums[name] / count if count else None


class _LayerAccumulator:
    """Pools the measures of one layer over calls (inputs); the figures' data from the first input."""

    def __init__(self, name: str, cfg: AnalyzeConfig) -> None:
        self.name, self.cfg = name, cfg
        self.method = self.kind = self.truncation = None
        self.heads: list[_HeadSums] = []
        self.energy: dict[str, list[list[float]]] = {}
        self.max_phi: dict[str, Tensor] = {}
        self.rank_methods: set[str] = set()
        self.tokens = self.grid = None
        self.maps: Tensor | None = None  # (points, Hg, Wg), head mean, first input
        self.map_points: list[tuple[int, int]] = []
        self.pca: dict[str, Any] | None = None
        self.inputs = 0

    def __call__(self, cap: AttentionCapture) -> None:
        B, H, N, _ = cap.q.shape
        if not self.heads:
            self.heads = [_HeadSums() for _ in range(H)]
            self.method, self.kind, self.truncation = cap.method, cap.kind, cap.truncation
            self.tokens, self.grid = N, cap.grid
        for b in range(B):
            first = self.inputs == 0
            self._one_input(cap, b, first)
            self.inputs += 1

    # -- one input ---------------------------------------------------------------------------
    def _one_input(self, cap: AttentionCapture, b: int, first: bool) -> None:
        cfg = self.cfg
        valid = cap.valid[b].bool() if cap.valid is not None else torch.ones(cap.q.shape[2], dtype=torch.bool)
        valid = valid.to(cap.q.device)
        keys = valid.nonzero().flatten()
        M = keys.numel()
        if M == 0:
            return
        gen = torch.Generator().manual_seed(cfg.seed + self.inputs)
        order = torch.randperm(M, generator=gen)
        queries = keys[order[: min(cfg.queries, M)].to(keys.device)].sort().values
        rank_keys = keys[torch.randperm(M, generator=gen)[: min(cfg.rank_keys, M)].to(keys.device)].sort().values
        topk = max(1, math.ceil(cfg.topk_fraction * M - 1e-9))  # 0.07·100 is 7.000000000000001
        positions = self._positions(cap, keys)
        for h, sums in enumerate(self.heads):
            q, k = cap.q[b, h].float(), cap.k[b, h].float()
            if cap.kind == "linear":
                phi_q, phi_k = cap.phi_q[b, h].float(), cap.phi_k[b, h].float()
                rows, empty = feature_rows(phi_q[queries], phi_k[keys])
                sums.add("empty_rows", empty.double())
                kept = ~empty
                rank = self._linear_rank(phi_q[keys], phi_k[keys])
                scores = q[queries][kept] @ k[rank_keys].T
                feature_scores = phi_q[queries][kept] @ phi_k[rank_keys].T
                sums.add("rank_correlation", spearman(scores, feature_scores))
                self._features(cap, b, h, valid)
            else:
                rows = softmax_rows(q[queries], k[keys], cap.scale)
                kept = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
                rank = self._softmax_rank(q[keys], k[keys], cap.scale, rows, M)
            live = rows[kept]
            entropy = row_entropy(live)
            sums.add("entropy", entropy)
            if M > 1:
                sums.add("entropy_norm", entropy / math.log(M))
            sums.add("top1_mass", topk_mass(live, 1))
            sums.add("topk_mass", topk_mass(live, topk))
            sums.add("effective_rank", rank)
            if positions is not None:
                spatial_keys = keys >= cap.num_prefix_tokens
                spatial_queries = queries[kept] >= cap.num_prefix_tokens
                if spatial_queries.any() and spatial_keys.any():
                    qpos = self._token_positions(cap, queries[kept][spatial_queries])
                    sums.add(
                        "attention_distance",
                        attention_distance(live[spatial_queries][:, spatial_keys], qpos, positions[spatial_keys]),
                    )
        if first:
            self._figure_data(cap, b, valid, keys, queries)

    def _linear_rank(self, phi_q: Tensor, phi_k: Tensor) -> float:
        # A = diag(1/r)·Φq·Φkᵀ with r_i = φq_i·Σ_j φk_j; rows with r = 0 are zero rows (no singular value).
        phi_q = phi_q.double()
        r = phi_q @ phi_k.double().sum(0)
        left = torch.where(r[:, None] > 0, phi_q / r.clamp_min(1e-300)[:, None], torch.zeros_like(phi_q))
        self.rank_methods.add("exact (low-rank factors)")
        return effective_rank(low_rank_singular_values(left, phi_k))

    def _softmax_rank(self, q: Tensor, k: Tensor, scale: float, rows: Tensor, M: int) -> float:
        if M <= self.cfg.exact_rank_limit:
            self.rank_methods.add("exact (dense)")
            return effective_rank(torch.linalg.svdvals(softmax_rows(q, k, scale).double()))
        self.rank_methods.add(f"estimated from {rows.shape[0]} sampled rows")
        return effective_rank(sampled_singular_values(rows, M))

    def _features(self, cap: AttentionCapture, b: int, h: int, valid: Tensor) -> None:
        for side, phi, pre in (("q", cap.phi_q, cap.pre_q), ("k", cap.phi_k, cap.pre_k)):
            peak = feature_max(phi[b, h].float(), valid)
            key = f"{side}{h}"
            self.max_phi[key] = peak if key not in self.max_phi else torch.maximum(self.max_phi[key], peak)
            if pre is not None:
                dropped, total = discarded_energy(pre[b, h], valid)
                pair = self.energy.setdefault(side, [[0.0, 0.0] for _ in self.heads])[h]
                pair[0] += dropped
                pair[1] += total

    # -- positions ---------------------------------------------------------------------------
    def _positions(self, cap: AttentionCapture, keys: Tensor) -> Tensor | None:
        if cap.grid is None:
            return None
        return self._token_positions(cap, keys)

    @staticmethod
    def _token_positions(cap: AttentionCapture, tokens: Tensor) -> Tensor:
        """(row, col) on the grid of each token; prefix tokens get (−1, −1) (callers leave them out)."""
        spatial = (tokens - cap.num_prefix_tokens).clamp_min(0)
        width = cap.grid[1]
        pos = torch.stack([spatial // width, spatial % width], -1).float()
        return torch.where((tokens >= cap.num_prefix_tokens)[:, None], pos, torch.full_like(pos, -1.0))

    # -- figures -----------------------------------------------------------------------------
    def _figure_data(self, cap: AttentionCapture, b: int, valid: Tensor, keys: Tensor, queries: Tensor) -> None:
        if cap.grid is not None:
            Hg, Wg = cap.grid
            P = cap.num_prefix_tokens
            points = [(min(Hg - 1, int(r * Hg)), min(Wg - 1, int(c * Wg))) for r, c in self.cfg.query_points]
            tokens = torch.tensor([P + r * Wg + c for r, c in points], device=cap.q.device)
            spatial = keys[keys >= P]  # the valid grid tokens; padded ones are no keys
            maps = torch.zeros(len(points), Hg * Wg, dtype=torch.float32, device=cap.q.device)
            rows = torch.stack([self._rows(cap, b, h, tokens, spatial) for h in range(len(self.heads))]).mean(0)
            maps[:, spatial - P] = rows
            maps[~valid[tokens]] = float("nan")  # a padded query token has no map
            self.maps = maps.view(len(points), Hg, Wg).cpu()
            self.map_points = points
        self.pca = self._pca(cap, b, keys, queries)

    @staticmethod
    def _rows(cap: AttentionCapture, b: int, h: int, queries: Tensor, keys: Tensor) -> Tensor:
        if cap.kind == "linear":
            return feature_rows(cap.phi_q[b, h, queries].float(), cap.phi_k[b, h, keys].float())[0]
        return softmax_rows(cap.q[b, h, queries].float(), cap.k[b, h, keys].float(), cap.scale)

    def _pca(self, cap: AttentionCapture, b: int, keys: Tensor, queries: Tensor) -> dict[str, Any]:
        q, k = cap.q[b, 0].float(), cap.k[b, 0].float()
        scale = q.shape[-1] ** -0.5
        own = (cap.phi_q[b, 0].float(), cap.phi_k[b, 0].float()) if cap.kind == "linear" else (q, k)
        out: dict[str, Any] = {"head": 0, "queries": [int(t) for t in queries.cpu()], "maps": {}}
        for name, (fq, fk) in (("identity", (q, k)), ("relu", (F.relu(q), F.relu(k))), ("own", own)):
            rows = softmax_rows(fq[queries], fk[keys], scale)
            coords, share = pca_2d(rows)
            out["maps"][name] = {
                "coords": coords.float().cpu(),
                "explained_variance": [float(v) for v in share],
                "effective_rank": effective_rank(torch.linalg.svdvals(rows.double())),
            }
        return out

    # -- result ------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        heads = []
        for h, sums in enumerate(self.heads):
            row = {name: sums.mean(name) for name in HEAD_MEASURES}
            for side in ("q", "k"):
                pair = self.energy.get(side, [[0.0, 0.0]] * len(self.heads))[h]
                if self.kind != "linear" or self.truncation == "unknown":
                    row[f"discarded_energy_{side}"] = None
                elif self.truncation == "none":
                    row[f"discarded_energy_{side}"] = 0.0
                else:
                    row[f"discarded_energy_{side}"] = pair[0] / pair[1] if pair[1] > 0 else None
                peak = self.max_phi.get(f"{side}{h}")
                row[f"dead_dims_{side}"] = float(dead_fraction(peak, self.cfg.dead_tol)) if peak is not None else None
            heads.append(row)
        mean = {}
        for name in HEAD_MEASURES:
            values = [row[name] for row in heads if row[name] is not None]
            mean[name] = sum(values) / len(values) if values else None
        pca = None
        if self.pca is not None:
            pca = {
                "head": self.pca["head"],
                "maps": {
                    n: {"explained_variance": m["explained_variance"], "effective_rank": m["effective_rank"]}
                    for n, m in self.pca["maps"].items()
                },
            }
        return {
            "layer": self.name,
            "method": self.method,
            "kind": self.kind,
            "truncation": self.truncation,
            "tokens": self.tokens,
            "grid": list(self.grid) if self.grid else None,
            "inputs": self.inputs,
            "effective_rank_method": sorted(self.rank_methods),
            "heads": heads,
            "mean": mean,
            "pca": pca,
        }


def analyze_model(
    model: nn.Module,
    batches: Iterable[Any],
    cfg: AnalyzeConfig | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, Any]:
    """Run ``model`` (eval mode, no gradients) on every batch and measure each attention layer.

    ``forward(model, batch)`` defaults to ``model(batch)``. Returns ``{"layers": [...], "mean": {...},
    "skipped": [...], "figures": {...}}``: per layer the :data:`HEAD_MEASURES` of every head and
    their mean, the PCA numbers, and in ``figures`` the tensors the plots need (attention maps of the
    query points on the first input, PCA coordinates), which are not JSON.
    """
    cfg = cfg or AnalyzeConfig()
    if not attention_layers(model):
        raise ValueError(
            f"{type(model).__name__} has no attention layer that analyze can measure (the library's "
            "linear and softmax layers, timm's Attention); build it with mirrorla.create_model(..., attention=...)"
        )
    forward = forward or (lambda m, x: m(x))
    accumulators: dict[str, _LayerAccumulator] = {}

    def consume(cap: AttentionCapture) -> None:
        if cap.layer not in accumulators:
            accumulators[cap.layer] = _LayerAccumulator(cap.layer, cfg)
        accumulators[cap.layer](cap)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_attention(model, consume):
            for batch in batches:
                forward(model, batch)
    finally:
        model.train(was_training)
    if not accumulators:
        raise ValueError("no attention layer was called: check that the inputs reach the model's attention")
    layers = [acc.result() for acc in accumulators.values()]
    mean = {}
    for name in HEAD_MEASURES:
        values = [layer["mean"][name] for layer in layers if layer["mean"][name] is not None]
        mean[name] = sum(values) / len(values) if values else None
    figures = {
        acc.name: {"maps": acc.maps, "points": acc.map_points, "grid": acc.grid, "pca": acc.pca}
        for acc in accumulators.values()
    }
    return {
        "layers": layers,
        "mean": mean,
        "skipped": [{"layer": n, "reason": r} for n, r in skipped_layers(model)],
        "settings": {
            "queries": cfg.queries,
            "topk_fraction": cfg.topk_fraction,
            "exact_rank_limit": cfg.exact_rank_limit,
            "rank_keys": cfg.rank_keys,
            "dead_tol": cfg.dead_tol,
            "seed": cfg.seed,
        },
        "figures": figures,
    }
