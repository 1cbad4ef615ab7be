"""What a run read: absolute paths and SHA-256 of data files, recorded in ``config.json`` and ``results.json``.

A file's record is ``{"path", "sha256", "bytes"}``. A folder read as a whole (an ImageFolder split, a
torchvision dataset's folder) is one record whose ``sha256`` is the SHA-256 of the lines
``<relative path>\\t<file SHA-256>\\n`` of its files in sorted order, with ``files`` the file count.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["file_record", "folder_record", "data_records"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path).resolve()
    return {"path": str(path), "sha256": _sha256(path), "bytes": path.stat().st_size}


def folder_record(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(folder).as_posix()}\t{_sha256(p)}\n" for p in files)
    return {
        "path": str(folder),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
    }


def data_records(paths: Iterable[str | os.PathLike]) -> tuple[dict[str, Any], ...]:
    """One record per distinct file or folder, sorted by path."""
    unique = sorted({Path(p).resolve() for p in paths})
    return tuple(folder_record(p) if p.is_dir() else file_record(p) for p in unique)
