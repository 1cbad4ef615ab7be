"""Crash-safe checkpoints: weights in safetensors, training state in a small ``.pt``, a JSON pointer.

Layout of ``<run>/checkpoints/``::

    epoch0003.safetensors   model weights, EMA weights under the prefix ``ema.``
    epoch0003.state.pt      optimizer, scheduler, grad scaler, epoch, step, RNG states, config,
                            SHA-256 of the weights file
    last.json               {"epoch": 3, "weights": "epoch0003.safetensors", "state": "epoch0003.state.pt"}

Every file is written to a temporary name in the same directory, flushed to disk and moved into
place with ``os.replace`` (atomic on POSIX), and ``last.json`` is replaced only after both files of
the new checkpoint are complete, so a crash at any moment leaves the previous checkpoint intact and
pointed to. Loading verifies the weights' hash, so a truncated or mismatched file raises
:class:`CheckpointError` with the file name and what to do, not an error from deep inside torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "resolve_checkpoint", "atomic_write_bytes"]

FORMAT = "mirrorla-checkpoint-1"
EMA_PREFIX = "ema."


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not belong to its partner file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    directory: str | os.PathLike,
    epoch: int,
    model_state: dict[str, Tensor],
    train_state: dict[str, Any],
    ema_state: dict[str, Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``epoch`` atomically and keep only the newest ``keep``; returns the weights path."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({EMA_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in ema_state.items()})
    weights = save(tensors, metadata={"format": FORMAT, "epoch": str(epoch)})
    stem = f"epoch{epoch:04d}"
    atomic_write_bytes(directory / f"{stem}.safetensors", weights)
    state = {**train_state, "format": FORMAT, "epoch": epoch, "weights_sha256": _sha256(weights)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(directory / f"{stem}.state.pt", buf.getvalue())
    pointer = {"epoch": epoch, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
    atomic_write_bytes(directory / "last.json", json.dumps(pointer).encode())
    # Old checkpoints go only after the pointer names the new one.
    for old in sorted(directory.glob("epoch*.safetensors"))[:-keep]:
        for path in (old, old.with_name(old.name.replace(".safetensors", ".state.pt"))):
            path.unlink(missing_ok=True)
    return directory / f"{stem}.safetensors"


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, state) paths for a run directory, a ``checkpoints/`` directory, or either file."""
    path = Path(path)
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        pointer = ckpt_dir / "last.json"
        if not pointer.is_file():
            raise FileNotFoundError(f"no checkpoint in {path}: {pointer} does not exist (was the run saved?)")
        try:
            info = json.loads(pointer.read_text())
            return ckpt_dir / info["weights"], ckpt_dir / info["state"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{pointer} is corrupt ({err}); pass a checkpoint file explicitly") from err
    if path.name.endswith(".state.pt"):
        return path.with_name(path.name[: -len(".state.pt")] + ".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_name(path.name[: -len(".safetensors")] + ".state.pt")
    raise ValueError(f"{path} is neither a directory, a .safetensors file nor a .state.pt file")


def load_checkpoint(path: str | os.PathLike, weights_only: bool = False) -> dict[str, Any]:
    """Load a checkpoint. Returns ``{"model": ..., "ema": ... | None, "state": ... | None, "path": ...}``.

    ``weights_only=True`` accepts a lone ``.safetensors`` file (for ``mirrorla eval``); otherwise the
    state file must exist and its recorded SHA-256 must match the weights.

    Raises:
        FileNotFoundError: a file does not exist.
        CheckpointError: a file is truncated or corrupt, or weights and state do not belong together.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights_path, state_path = resolve_checkpoint(path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint weights {weights_path} do not exist")
    data = weights_path.read_bytes()
    hint = "the file is truncated or corrupt (an interrupted copy?); use an earlier checkpoint or retrain"
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"cannot read {weights_path} ({len(data)} bytes): {err}; {hint}") from err
    state = None
    if state_path.is_file():
        try:
            state = torch.load(io.BytesIO(state_path.read_bytes()), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types (EOFError, UnpicklingError, RuntimeError ...)
            raise CheckpointError(f"cannot read {state_path}: {type(err).__name__}: {err}; {hint}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{state_path} is not a {FORMAT} state file")
        if state.get("weights_sha256") != _sha256(data):
            raise CheckpointError(
                f"{weights_path} does not match {state_path} (SHA-256 differs): the weights file was changed, "
                f"truncated or comes from another run; {hint}"
            )
    elif not weights_only:
        raise FileNotFoundError(f"training state {state_path} does not exist; --resume needs both files")
    model = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or None
    return {"model": model, "ema": ema, "state": state, "path": weights_path}
