"""Trained weights shipped inside the package: the seed-0 runs behind the published tables.

Each weights file lives in a folder named after its tag, beside a JSON file with its provenance::

    weights/<tag>/<model>.safetensors   the run's last checkpoint, byte for byte (mirrorla checkpoint format)
    weights/<tag>/<model>.json          run command, commit, date, machine, the run's settings, its result,
                                        the SHA-256 of the weights file and a cheap check (see below)

``<model>`` is a model name (``vit_micro_mirror``, a timm name; ``sr_tiny_mirror``) and ``<model>.<tag>`` the name the
weights go by everywhere:

- timm (classifiers): ``timm.create_model("vit_micro_mirror.fmnist", pretrained=True)`` (``timm.list_pretrained()``);
  the SR networks are not timm models: ``mirrorla.engine.sr.load_trained_sr("pretrained:sr_tiny_mirror.photos_x2")``;
- the command line: ``pretrained:vit_micro_mirror.fmnist`` wherever a checkpoint is taken
  (``mirrorla eval``, ``mirrorla analyze``, ``mirrorla sr eval``, ``mirrorla sr upscale``).

The ``check`` of a provenance file is a number recomputed from the shipped weights by
``scripts/package_weights.py`` on a small slice of the test data (top-1 on the first 500 Fashion-MNIST
test images; PSNR-Y of one test photo's centre crop for super-resolution), which the default tests
recompute; the full ``result`` is re-scored by a slow test.

This module imports neither torch nor timm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "ShippedWeights", "list_weights", "get_weights", "resolve_weights", "shipped_config"]

#: How a command-line checkpoint argument names shipped weights: ``pretrained:<model>.<tag>``.
PREFIX = "pretrained:"

_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file: ``name`` = ``<model>.<tag>``; ``meta`` = its provenance JSON."""

    model: str
    tag: str
    file: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"


@cache
def _index() -> dict[str, ShippedWeights]:
    found = {}
    for meta_path in sorted(_ROOT.glob("*/*.json")):
        file = meta_path.with_suffix(".safetensors")
        if not file.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        entry = ShippedWeights(model=meta_path.stem, tag=meta_path.parent.name, file=file, meta=meta)
        found[entry.name] = entry
    return found


def list_weights(pattern: str | None = None) -> list[str]:
    """Sorted names (``<model>.<tag>``) of the shipped weights, optionally filtered by a shell pattern."""
    import fnmatch

    names = sorted(_index())
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_weights(name: str) -> ShippedWeights:
    """The shipped weights ``name`` (``<model>.<tag>``, or ``<model>`` when one tag exists for it)."""
    index = _index()
    if name in index:
        return index[name]
    tagged = [n for n in index if n.split(".", 1)[0] == name]
    if len(tagged) == 1:
        return index[tagged[0]]
    raise ValueError(f"no shipped weights named {name!r}; shipped: {', '.join(index) or 'none'}")


def resolve_weights(spec: str) -> Path | None:
    """The file of ``pretrained:<name>``; None for any other spelling (a path)."""
    if not str(spec).startswith(PREFIX):
        return None
    return get_weights(str(spec)[len(PREFIX) :]).file


def shipped_config(weights_path: str | Path) -> dict[str, Any] | None:
    """The saved run settings of a shipped weights file; None for a file that is not shipped."""
    path = Path(weights_path).resolve()
    for entry in _index().values():
        if entry.file == path:
            return dict(entry.meta["config"])
    return None
