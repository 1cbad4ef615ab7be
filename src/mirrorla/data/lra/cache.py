"""On-disk cache of generated LRA data: one folder per task and parameter set, files written atomically.

Layout: ``<lra_cache_dir()>/<task>-v<FORMAT_VERSION>-<key1>=<value1>-…/`` holding ``train.npz``,
``eval.npz`` (arrays ``tokens``, ``labels``, ``lengths``) and ``meta.json`` (the parameters). Every file
is written to a temporary file in the same folder and moved into place with ``os.replace``, and
``meta.json`` is written last, so a folder with ``meta.json`` is complete; concurrent writers produce
identical files and the last one wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "cache_folder", "cached_splits", "lra_cache_dir"]

#: Bump when generated data or the file layout changes, so old caches are not reused.
FORMAT_VERSION = 1
ENV_VAR = "MIRRORLA_CACHE"
_SPLITS = ("train", "eval")
_ARRAYS = ("tokens", "labels", "lengths")


def lra_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of the LRA cache: ``cache_dir`` itself if given, else ``$MIRRORLA_CACHE/lra``, else
    ``$XDG_CACHE_HOME/mirrorla/lra`` (default ``~/.cache/mirrorla/lra``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]) / "lra"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mirrorla" / "lra"


def cache_folder(root: Path, task: str, params: dict[str, Any]) -> Path:
    """``root/<task>-v<version>-<key>=<value>-…`` with every parameter in the name, in the given order."""
    parts = [f"{key}={str(value).replace('/', '_')}" for key, value in params.items()]
    return root / "-".join([task, f"v{FORMAT_VERSION}", *parts])


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(folder: Path, params: dict[str, Any]) -> dict[str, dict[str, np.ndarray]] | None:
    meta = folder / "meta.json"
    if not meta.is_file() or not all((folder / f"{s}.npz").is_file() for s in _SPLITS):
        return None
    try:
        if json.loads(meta.read_text())["params"] != json.loads(json.dumps(params)):
            return None
        splits = {}
        for split in _SPLITS:
            with np.load(folder / f"{split}.npz") as data:
                splits[split] = {name: data[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError):  # a damaged or foreign file: regenerate it
        return None
    return splits


def cached_splits(
    folder: Path,
    params: dict[str, Any],
    generate: Callable[[str], dict[str, np.ndarray]],
) -> tuple[dict[str, dict[str, np.ndarray]], tuple[Path, ...]]:
    """The train and eval arrays in ``folder``, generated with ``generate(split)`` and saved if absent.

    Returns the arrays of each split and the cache files (for :func:`mirrorla.data.checksums.data_records`).
    """
    files = tuple(folder / f"{s}.npz" for s in _SPLITS) + (folder / "meta.json",)
    splits = _load(folder, params)
    if splits is not None:
        return splits, files
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in _SPLITS:
        arrays = generate(split)
        _atomic_write(folder / f"{split}.npz", lambda fh, arrays=arrays: np.savez(fh, **arrays))
        splits[split] = arrays
    payload = json.dumps({"format_version": FORMAT_VERSION, "params": params}, indent=1).encode()
    _atomic_write(folder / "meta.json", lambda fh: fh.write(payload))
    return splits, files
