"""Crash-safe checkpoints: weights in safetensors, training state in a small ``.pt``, a JSON pointer.

Layout of ``<run>/checkpoints/``::

    epoch0003.safetensors   model weights, EMA weights under the prefix ``ema.``; header metadata: the
                            SHA-256 of the tensors and the SHA-256 of the state file
    epoch0003.state.pt      optimizer (with the parameter names of each group), scheduler, grad scaler,
                            epoch, step, RNG states, config, SHA-256 of the weights' tensors
    last.json               {"epoch": 3, "weights": "epoch0003.safetensors", "state": "epoch0003.state.pt"}

Every file is written to a temporary name in the same directory, flushed to disk and moved into
place with ``os.replace`` (atomic on POSIX), and ``last.json`` is replaced only after both files of
the new checkpoint are complete, so a crash at any moment leaves the previous checkpoint intact and
pointed to. What a crash can leave behind (temporary files, a half-written newer pair, the rest of an
interrupted prune) is removed by :func:`clean_run_dir` when the run starts again.

Integrity. Each file of a pair records the other's hash, and since a file cannot hold the hash of a
file that holds its own, the state records the hash of the weights' *tensors* (names, dtypes, shapes
and bytes; not the header) while the weights' header records the hash of the whole state file. So a
changed byte in either file, or two files of different checkpoints, make loading fail with a
:class:`CheckpointError` naming the file, not an error from deep inside torch (or, for a flipped bit
in an Adam moment, no error at all). Checkpoints of format ``mirrorla-checkpoint-1`` (before the state
had a checksum) still load, with a warning: their weights are checked, their state cannot be.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "OutputWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "checkpoint_config",
    "atomic_write_bytes",
    "save_figure",
    "write_result_json",
    "read_result_json",
    "ResultFileError",
    "RECORD_SHA256",
    "remove_temp_files",
    "TEMP_NAME",
    "clean_run_dir",
    "explain_write_errors",
    "output_write_error",
]

FORMAT = "mirrorla-checkpoint-2"
FORMAT_UNCHECKED_STATE = "mirrorla-checkpoint-1"  # the state file carries no checksum
EMA_PREFIX = "ema."
_CHECKPOINT_NAME = re.compile(r"epoch(\d+)\.(safetensors|state\.pt)")
# Keys save_checkpoint adds to the state; stale copies from a loaded state are replaced, never kept.
_RECORD_KEYS = ("format", "epoch", "tensors_sha256", "weights_sha256")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not belong to its partner file."""


# What to do about each error of writing that the user can fix.
_WRITE_ADVICE = {
    errno.ENOSPC: "free disk space or choose another --out",
    errno.EDQUOT: "free space within the disk quota or choose another --out",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "fix the permissions of {parent} or choose another --out",
    errno.EPERM: "fix the permissions of {parent} or choose another --out",
}


class OutputWriteError(OSError):
    """Writing a run's output failed for a reason the user must fix: disk full, read-only, no permission.

    ``str()`` is one line: the path, the reason and what to do.
    """

    def __init__(self, code: int, strerror: str, filename: str, message: str = "") -> None:
        # OSError's signature, so the error survives pickling (compare's worker processes).
        super().__init__(code, strerror, filename)
        self.message = message or f"{filename}: {strerror}"

    @classmethod
    def from_os_error(cls, path: str | os.PathLike, err: OSError, action: str = "cannot write") -> OutputWriteError:
        advice = _WRITE_ADVICE[err.errno].format(parent=Path(path).parent)
        code = errno.errorcode.get(err.errno, str(err.errno))
        message = (
            f"{action} {path}: {err.strerror} [{code}]; {advice}, then run again (with --resume if the run "
            "has a checkpoint: the last complete one is intact)"
        )
        return cls(err.errno, err.strerror, str(path), message)

    def __str__(self) -> str:
        return self.message


def output_write_error(err: OSError, path: str | os.PathLike | None = None) -> OutputWriteError | None:
    """``err`` as an :class:`OutputWriteError` if the user can fix it (disk full, read-only, permission).

    Without ``path`` (an error from code that did not say what it was doing), the error's own file
    name is used and the message says "cannot access" rather than "cannot write".
    """
    if isinstance(err, OutputWriteError):
        return err
    action = "cannot write" if path is not None else "cannot access"
    path = path if path is not None else err.filename
    if err.errno not in _WRITE_ADVICE or path is None:
        return None
    return OutputWriteError.from_os_error(path, err, action)


@contextlib.contextmanager
def explain_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, read-only file system or missing permission while writing ``path`` into an
    :class:`OutputWriteError` that names ``path`` and what to do; other errors pass unchanged."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as err:
        explained = output_write_error(err, path)
        if explained is None:
            raise
        raise explained from err


def _umask() -> int:
    # Reading the umask means setting it; it is restored at once (a file another thread creates in
    # between would get mode 0o022's, the common default).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The temporary name :func:`atomic_write_bytes` writes ``<folder>/<name>`` under: ``.<name>.<8 random>.tmp``
#: (mkstemp's letters). :func:`remove_temp_files` removes such names that a killed process left.
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is on disk
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file + fsync + ``os.replace``: the one writer of every file
    a command writes (JSON, Markdown, checkpoints, figures, images).

    The file gets the mode ``open()`` would give a new file (0o666 less the umask), not mkstemp's 0o600.
    With ``replace=False`` an existing ``path`` is never replaced, also not one another process creates
    in the meantime: the complete file is published with ``os.link``, which fails if the name exists
    (no check-then-write race).

    Raises:
        OutputWriteError: the disk is full, the file system read-only or permission is denied; ``path``
            is then unchanged and no temporary file is left.
        FileExistsError: ``replace=False`` and ``path`` exists.
    """
    path = Path(path)
    with explain_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(
                        errno.EEXIST, f"{path} exists; it is not replaced (pass --overwrite to replace it)", str(path)
                    ) from None
            _fsync_folder(path.parent)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Render a matplotlib figure and write it with :func:`atomic_write_bytes` (format from the suffix,
    default PNG); the figure is closed, also on an error. Returns ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_bytes` that a killed process left in ``folder`` (not
    its sub-folders); returns them. Call it only while holding the folder's lock: another writer's
    temporary file is its file in the making."""
    folder = Path(folder)
    doomed = [p for p in folder.glob(".*.tmp") if TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for path in doomed:
        with explain_write_errors(path):
            path.unlink(missing_ok=True)
    return doomed


#: The key under which a result file records the SHA-256 of the rest of its content.
RECORD_SHA256 = "record_sha256"


class ResultFileError(ValueError):
    """A result file is unreadable, not a JSON object, or does not match the checksum it records."""


def _record_digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != RECORD_SHA256}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode())


def write_result_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a result file (``final.json``, ``result.json``, ``results.json``...) with
    :func:`atomic_write_bytes`, recording the SHA-256 of its content under :data:`RECORD_SHA256`, so a
    resume can tell a file it wrote from one changed since (:func:`read_result_json`)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != RECORD_SHA256}, default=str))
    atomic_write_bytes(path, json.dumps({**body, RECORD_SHA256: _record_digest(body)}, indent=2).encode())


def read_result_json(path: str | os.PathLike, require_checksum: bool = False) -> dict[str, Any]:
    """The content of a result file written by :func:`write_result_json`, without its checksum.

    Raises:
        ResultFileError: unreadable, not a JSON object, or its content does not match the SHA-256 it
            records (changed by hand, or corrupt); with ``require_checksum`` also a file without one
            (written by an older mirrorla).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ResultFileError(f"cannot read {path} ({err})") from err
    recorded = record.pop(RECORD_SHA256, None)
    if recorded is None and require_checksum:
        raise ResultFileError(f"{path} records no checksum (written by an older mirrorla)")
    if recorded is not None and recorded != _record_digest(record):
        raise ResultFileError(f"{path} does not match the SHA-256 it records: it was changed after it was written")
    return record


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file already read successfully by safetensors."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _checkpoint_files(directory: Path) -> dict[int, list[Path]]:
    """The checkpoint files in ``directory`` by epoch (one or both of a pair)."""
    files: dict[int, list[Path]] = {}
    for path in directory.iterdir() if directory.is_dir() else ():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match:
            files.setdefault(int(match[1]), []).append(path)
    return files


def save_checkpoint(
    directory: str | os.PathLike,
    epoch: int,
    model_state: dict[str, Tensor],
    train_state: dict[str, Any],
    ema_state: dict[str, Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``epoch`` atomically and keep only the newest ``keep``; returns the weights path.

    Checkpoints of later epochs (left by a run resumed from an earlier one) are not pruned here: the
    run overwrites them as it goes, and :func:`clean_run_dir` removes the rest at the next start.

    Raises:
        OutputWriteError: the disk is full, the file system read-only or permission is denied; the
            previous checkpoint is then still complete and pointed to.
    """
    from safetensors.torch import save

    directory = Path(directory)
    with explain_write_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({EMA_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in ema_state.items()})
    tensors_sha256 = _tensors_sha256(tensors)
    state = {k: v for k, v in train_state.items() if k not in _RECORD_KEYS}
    state.update(format=FORMAT, epoch=epoch, tensors_sha256=tensors_sha256)
    buf = io.BytesIO()
    torch.save(state, buf)
    state_bytes = buf.getvalue()
    metadata = {"format": FORMAT, "epoch": str(epoch), "tensors_sha256": tensors_sha256}
    metadata["state_sha256"] = _sha256(state_bytes)
    stem = f"epoch{epoch:04d}"
    atomic_write_bytes(directory / f"{stem}.safetensors", save(tensors, metadata=metadata))
    atomic_write_bytes(directory / f"{stem}.state.pt", state_bytes)
    pointer = {"epoch": epoch, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
    atomic_write_bytes(directory / "last.json", json.dumps(pointer).encode())
    # Old checkpoints go only after the pointer names the new one, and never the new one itself.
    files = _checkpoint_files(directory)
    older = sorted(e for e in files if e < epoch)
    for old in older[: max(0, len(older) - (keep - 1))]:
        for path in files[old]:
            path.unlink(missing_ok=True)
    return directory / f"{stem}.safetensors"


def _read_pointer(ckpt_dir: Path) -> tuple[str, str] | None:
    """(weights, state) names in ``last.json``, or None if it is missing or unreadable."""
    try:
        info = json.loads((ckpt_dir / "last.json").read_text())
        return str(info["weights"]), str(info["state"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_run_dir(run_dir: str | os.PathLike, keep: int, protect: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Remove what an interrupted run left in ``run_dir`` and its ``checkpoints/``; returns the removed paths.

    Removed: temporary files of :func:`atomic_write_bytes` (any name: the run's files, ``test_images.json``,
    images); checkpoint files
    of epochs after the one ``last.json`` points to (a save interrupted before the pointer moved); and,
    of earlier epochs, lone halves of a pair and pairs beyond the newest ``keep`` (an interrupted
    prune). Never removed: the checkpoint ``last.json`` points to, the checkpoints of the paths in
    ``protect`` (the one a run resumes from), and any file whose name a run does not write. Without a
    readable ``last.json`` only temporary files are removed.

    Call it only while no other process writes to the run directory (the trainer holds its lock).
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    doomed = [p for folder in (run_dir, ckpt_dir) for p in folder.glob(".*.tmp") if TEMP_NAME.fullmatch(p.name)]
    pointer = _read_pointer(ckpt_dir)
    match = _CHECKPOINT_NAME.fullmatch(pointer[0]) if pointer else None
    if pointer and match and all((ckpt_dir / name).is_file() for name in pointer):
        current = int(match[1])
        kept = {current}
        for path in map(Path, protect):
            found = _CHECKPOINT_NAME.fullmatch(path.name)
            if found and path.parent.resolve() == ckpt_dir.resolve():
                kept.add(int(found[1]))
        files = _checkpoint_files(ckpt_dir)
        complete = sorted(e for e in files if e < current and len(files[e]) == 2)
        kept.update(complete[len(complete) - (keep - 1) :] if keep > 1 else [])
        doomed += [p for e, paths in files.items() if e not in kept for p in paths]
        doomed = [p for p in doomed if p.name not in pointer]
    for path in doomed:
        with explain_write_errors(path):
            path.unlink(missing_ok=True)
    return doomed


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, state) paths for a run directory, a ``checkpoints/`` directory, either file, or
    ``pretrained:<name>`` (weights shipped with the package, :mod:`mirrorla.weights`; they have no state file)."""
    from mirrorla.weights import resolve_weights

    shipped = resolve_weights(str(path))
    if shipped is not None:
        return shipped, shipped.with_name(shipped.name[: -len(".safetensors")] + ".state.pt")
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
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give a run folder, its checkpoints/ folder, or a .safetensors / .state.pt file"
        )
    raise ValueError(f"{path} is neither a directory, a .safetensors file nor a .state.pt file")


def load_checkpoint(path: str | os.PathLike, weights_only: bool = False) -> dict[str, Any]:
    """Load and verify a checkpoint.

    Returns ``{"model": ..., "ema": ... | None, "state": ... | None, "path": weights path, "state_path": ...}``.
    ``weights_only=True`` accepts a lone ``.safetensors`` file (for ``mirrorla eval``); otherwise the
    state file must exist. Both files are checked against the hashes recorded in the other (see the
    module docstring); a state of the older format without a checksum loads with a warning.

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
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"cannot read {weights_path} ({len(data)} bytes): {err}; {hint}") from err
    tensors_sha256 = _tensors_sha256(tensors) if "tensors_sha256" in metadata else None
    if tensors_sha256 is not None and tensors_sha256 != metadata["tensors_sha256"]:
        raise CheckpointError(f"{weights_path}: its tensors do not match the SHA-256 recorded in its header; {hint}")
    state = None
    if state_path.is_file():
        state_bytes = state_path.read_bytes()
        if "state_sha256" in metadata and _sha256(state_bytes) != metadata["state_sha256"]:
            raise CheckpointError(
                f"{state_path} does not match {weights_path}: its SHA-256 differs from the one the weights file "
                f"records (one of the two was changed or truncated, or they come from different checkpoints); {hint}"
            )
        try:
            state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types (EOFError, UnpicklingError, RuntimeError ...)
            raise CheckpointError(f"cannot read {state_path}: {type(err).__name__}: {err}; {hint}") from err
        _check_pair(state, state_path, weights_path, data, metadata, tensors_sha256, hint)
    elif not weights_only:
        raise FileNotFoundError(f"training state {state_path} does not exist; --resume needs both files")
    model = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or None
    return {"model": model, "ema": ema, "state": state, "path": weights_path, "state_path": state_path}


def _check_pair(
    state: Any,
    state_path: Path,
    weights_path: Path,
    weights: bytes,
    metadata: dict[str, str],
    tensors_sha256: str | None,
    hint: str,
) -> None:
    """The state file is of a known format and records the hash of these weights."""
    mismatch = CheckpointError(
        f"{weights_path} does not match {state_path} (SHA-256 differs): the weights file was changed, "
        f"truncated or comes from another run; {hint}"
    )
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt == FORMAT:
        if "state_sha256" not in metadata or state.get("tensors_sha256") != tensors_sha256:
            raise mismatch
    elif fmt == FORMAT_UNCHECKED_STATE:
        if state.get("weights_sha256") != _sha256(weights):
            raise mismatch
        warnings.warn(
            f"{state_path} was written by an older mirrorla ({fmt}) and has no checksum, so its optimizer "
            "state cannot be verified; the weights are verified, and checkpoints saved from now on have one",
            UserWarning,
            stacklevel=3,
        )
    else:
        raise CheckpointError(f"{state_path} is not a {FORMAT} state file")


def checkpoint_config(ckpt: dict[str, Any], checkpoint: str | os.PathLike) -> Any:
    """The :class:`TrainConfig` of the run that wrote ``ckpt`` (its state file, else the provenance of shipped
    weights, else the run's config.json)."""
    from mirrorla.engine.config import TrainConfig
    from mirrorla.weights import shipped_config

    if ckpt["state"] is not None:
        saved = ckpt["state"]["config"]
    elif (shipped := shipped_config(ckpt["path"])) is not None:
        saved = shipped
    else:
        cfg_path = Path(resolve_checkpoint(checkpoint)[0]).parent.parent / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"cannot find the run's settings: neither a .state.pt file nor {cfg_path}")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"cannot read the run's settings from {cfg_path}: not valid JSON ({err}); restore the file "
                "written by the run, or pass the checkpoint's .state.pt, which holds the settings too"
            ) from None
        if not isinstance(raw, dict):
            raise ValueError(f"cannot read the run's settings from {cfg_path}: expected a JSON object")
        saved = {k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig.from_dict({**saved, "resume": None, "progress": False})
