"""STILL configuration (docs/methods.md §7): a frozen dataclass validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["StillConfig", "COMPAT_MODES"]

COMPAT_MODES = ("clean",)


@dataclass(frozen=True)
class StillConfig:
    """Hyper-parameters of STILL attention.

    Attributes:
        chunk_size: chunk length l (§7.4). Queries see the previous and current chunk exactly; older
            chunks contribute ``topk`` selected tokens exactly and the rest through linear attention.
        topk: tokens per chunk and head kept for exact softmax attention (default 4 = 1/16 of 64).
            ``topk=0`` disables the sparse exact part (window + linear only).
        feature_dim: D_f, output width of the NP-Map's per-head linear map; features have 2·D_f entries.
        use_linear: ``False`` drops the linear branch (window + selected tokens only; with
            ``topk == chunk_size`` this is exact causal softmax attention).
        use_softmax: ``False`` drops every exact token (window and selected): plain causal linear
            attention with the same NP-Map features and gate, ``g ⊙ φq·S / (φq·z + eps)``. An ablation
            for prefill/perplexity (``topk`` and ``chunk_size`` are then unused); it has no decoding path.
        eps: added to the shared denominator (§7.5; Q4 of §7.8).
        saliency_eps: ε of the self-saliency smoothing (§7.3).
        compat: ``"clean"`` (the project's consistent form, §7.8). The official code's quirks are not
            reproduced; ``"official"`` raises with the reason.
    """

    chunk_size: int = 64
    topk: int = 4
    feature_dim: int = 128
    use_linear: bool = True
    use_softmax: bool = True
    eps: float = 1e-6
    saliency_eps: float = 1e-8
    compat: str = "clean"

    def __post_init__(self) -> None:
        for name in ("chunk_size", "topk", "feature_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"StillConfig.{name} must be an int, got {type(value).__name__} {value!r}")
        if self.chunk_size <= 0:
            raise ValueError(f"StillConfig.chunk_size must be > 0, got {self.chunk_size}; the default is 64")
        if self.topk < 0 or self.topk > self.chunk_size:
            raise ValueError(
                f"StillConfig.topk must be in [0, chunk_size={self.chunk_size}], got {self.topk}; it counts the "
                "tokens of each chunk kept for exact attention (default 4 of 64)"
            )
        if self.feature_dim <= 0:
            raise ValueError(f"StillConfig.feature_dim must be > 0, got {self.feature_dim}")
        if not isinstance(self.use_linear, bool):
            raise TypeError(f"StillConfig.use_linear must be a bool, got {self.use_linear!r}")
        if not isinstance(self.use_softmax, bool):
            raise TypeError(f"StillConfig.use_softmax must be a bool, got {self.use_softmax!r}")
        if not (self.use_softmax or self.use_linear):
            raise ValueError("StillConfig needs use_softmax or use_linear (with neither there is no attention)")
        if not (self.eps >= 0 and self.saliency_eps > 0):
            raise ValueError(f"eps must be >= 0 and saliency_eps > 0, got {self.eps}, {self.saliency_eps}")
        if self.compat == "official":
            raise NotImplementedError(
                "compat='official' (the official code's prefill/decode quirks Q1-Q5 of docs/methods.md §7.8) is not "
                "implemented; use compat='clean', whose prefill and decode agree"
            )
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"StillConfig.compat must be one of {COMPAT_MODES}, got {self.compat!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> StillConfig:
        """Build from keyword arguments, rejecting unknown keys with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise TypeError(f"unknown STILL option(s) {unknown}; valid options are {sorted(valid)}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)
