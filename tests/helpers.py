"""Test helpers: error measure, an allocation tracker for O(N) memory tests, a tiny Llama, bench usage errors,
the skip mark of tests that read Fashion-MNIST from disk."""

from __future__ import annotations

import re
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _have_fashion_mnist() -> bool:
    from mirrorla.data import DatasetNotFoundError, find_fashion_mnist

    try:
        return bool(find_fashion_mnist(download=False))
    except DatasetNotFoundError:
        return False


#: Tests that read Fashion-MNIST from disk (Debian's dataset-fashion-mnist) skip without it.
needs_fashion_mnist = pytest.mark.skipif(
    not _have_fashion_mnist(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error RMS(a - b) / RMS(b)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


class AllocationTracker(TorchDispatchMode):
    """Records the largest tensor any op produces and the peak of live bytes owned by op outputs.

    Views share their base's storage and are not counted twice. Inputs created before entering
    the mode are not counted, so the peak is what the traced computation itself allocates.
    """

    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            self.max_numel = max(self.max_numel, t.numel())
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self._seen or key == 0:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key, nbytes)
        return out


def tiny_llama(vocab: int, **config):
    """The tiny random Llama of the STILL tests (docs/methods.md §7.7): hidden 64, 2 layers, 4 heads,
    2 KV heads, head_dim 16; seed 0. ``config`` adds LlamaConfig fields (e.g. ``pad_token_id``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    llama = LlamaConfig(
        vocab_size=vocab, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **shape, **config
    )
    return LlamaForCausalLM(llama)


def bench_usage_error(kind: str, extra: list[str], tmp_path, capsys) -> str:
    """The error line of ``mirrorla bench <kind> *extra``, checking that the command exits with 2, that the error
    is one line naming the command, and that it wrote no output folder."""
    from mirrorla.cli import main

    out = tmp_path / "out"
    assert main(["bench", kind, *extra, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.match(rf"mirrorla bench( {kind})?: error: ", lines[-1]), lines  # argparse names the sub-command
    assert not out.exists()
    return lines[-1]
