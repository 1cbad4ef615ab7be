"""One writer per run folder: a lock file, and no silent replacement of a previous run.

A :class:`FolderLock` is the file ``<folder>/run.lock`` (or another name), created with ``O_EXCL`` so
that exactly one process can create it, holding the owner's pid, host name and start time as JSON.
It is removed when the owner leaves the ``with`` block, also on an exception. A process killed
outright (SIGKILL, power loss) leaves its lock behind; a lock whose pid is no longer running on this
host, or now belongs to a process started after the lock was taken (a reused pid), is stale and is
taken over with a warning. A lock held on another host cannot be checked from here, so the error
says which file to delete once that process is known to be gone.

:func:`claim_run_folder` is what ``train`` uses: the lock, then a check that a new run does not land
in a folder that already holds one (``--resume`` continues it, ``--overwrite`` replaces it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirrorla.engine.checkpoint import TEMP_NAME, explain_write_errors, remove_temp_files, resolve_checkpoint

__all__ = [
    "LOCK_NAME",
    "RUN_OUTPUTS",
    "FolderLock",
    "FolderLockedError",
    "claim_output_folder",
    "claim_run_folder",
    "resumed_run_folder",
]

LOCK_NAME = "run.lock"
#: What a run writes into its folder (``result.json``: a ``compare`` run; ``test_images.json``: ``sr train``;
#: ``sr_images``: a run of ``sr compare``); ``--overwrite`` removes these.
RUN_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "final.json",
    "result.json",
    "test_images.json",
    "sr_images",
    "checkpoints",
)


class FolderLockedError(ValueError):
    """Another live process holds the folder's lock."""


def _host() -> str:
    return socket.gethostname()


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime")
        )
        # Field 22 (starttime, clock ticks after boot); split after the ")" that ends the command name.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_stale(holder: dict[str, Any]) -> bool:
    """True when the lock's process is certainly gone: same host, and the pid is dead or was reused."""
    if holder.get("host") != _host() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        pass
    started = _process_start_time(pid)
    # /proc's start time has a resolution of one clock tick, and btime is rounded to the second.
    return started is not None and isinstance(holder.get("started"), (int, float)) and started > holder["started"] + 2


def _describe(holder: dict[str, Any]) -> str:
    command = f", running {holder['command']!r}" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started_at', '?')}{command}"


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing): ``with FolderLock(folder): ...``.

    ``acquire(timeout)`` waits up to ``timeout`` seconds for a live holder to let go (0: fail at
    once) and raises :class:`FolderLockedError` naming the holder and the lock file.
    """

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_NAME, purpose: str = "writing") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self._token: str | None = None

    def acquire(self, timeout: float = 0.0, poll: float = 0.1) -> FolderLock:
        with explain_write_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            holder = self._try_create()
            if holder is None:
                return self
            if not holder:  # released between our attempt and the read: try again at once
                continue
            if _is_stale(holder):
                print(
                    f"mirrorla: warning: taking over the stale lock {self.path} of {_describe(holder)}: "
                    "that process is no longer running; its run may be incomplete",
                    file=sys.stderr,
                    flush=True,
                )
                self._remove_stale(holder)
                continue
            if time.monotonic() >= deadline:
                raise self._busy(holder)
            time.sleep(poll)

    def _try_create(self) -> dict[str, Any] | None:
        """Create the lock file; None on success, else what the current holder wrote into it."""
        now = time.time()
        token = uuid.uuid4().hex
        record = {
            "pid": os.getpid(),
            "host": _host(),
            "started": now,
            "started_at": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
            "purpose": self.purpose,
            "command": " ".join(sys.argv),
            "token": token,
        }
        try:
            with explain_write_errors(self.path):
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return self._read_holder()
        try:
            with explain_write_errors(self.path), os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:  # a full disk: no empty lock file is left to refuse the next run
            self.path.unlink(missing_ok=True)
            raise
        self._token = token
        return None

    def _read_holder(self, attempts: int = 20) -> dict[str, Any]:
        # A holder writes its record right after creating the file; give it a moment before calling
        # the file unreadable.
        for _ in range(attempts):
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict):
                    return holder
            except FileNotFoundError:
                return {}  # released in the meantime: not stale, not held; the caller retries
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {"pid": None, "host": None, "purpose": f"unreadable lock file {self.path}"}

    def _remove_stale(self, holder: dict[str, Any]) -> None:
        # Move the stale file aside, then check it is still the one judged stale: two processes
        # taking over at once must not remove the lock the faster one has just created.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved != holder:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # put the live lock back
        aside.unlink(missing_ok=True)

    def check_free(self) -> None:
        """Raise :class:`FolderLockedError` if a live process holds the lock now (without taking it)."""
        if self._token is None and self.path.exists():
            holder = self._read_holder()
            if holder and not _is_stale(holder):
                raise self._busy(holder)

    def _busy(self, holder: dict[str, Any]) -> FolderLockedError:
        return FolderLockedError(
            f"{self.folder} is in use: {self.path} is held by {_describe(holder)} ({holder.get('purpose')}). "
            "One process writes into a folder at a time: wait for it to finish, or choose another folder. "
            f"If that process is gone (e.g. on another machine), delete {self.path}."
        )

    def release(self) -> None:
        if self._token is None:
            return
        try:
            if json.loads(self.path.read_text()).get("token") == self._token:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self._token = None

    def __enter__(self) -> FolderLock:
        return self.acquire() if self._token is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def resumed_run_folder(resume: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint lies in (``<run>/checkpoints/epochNNNN.*``), or None for a lone file."""
    weights = resolve_checkpoint(resume)[0]
    return weights.parent.parent if weights.parent.name == "checkpoints" else None


def _contents(folder: Path, ignore: tuple[str, ...]) -> list[str]:
    """What ``folder`` holds, less ``ignore`` and the temporary files a killed writer left (removed at start)."""
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in folder.iterdir()
        if p.name not in ignore and not TEMP_NAME.fullmatch(p.name)
    )


@contextlib.contextmanager
def claim_run_folder(folder: str | os.PathLike, *, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Hold ``folder``'s lock for a training run; a new run needs an empty folder or ``overwrite``.

    With ``overwrite`` the previous run's outputs (:data:`RUN_OUTPUTS`) are deleted; other files stay.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        with FolderLock(folder, purpose="training") as lock:
            if not resume:
                present = _contents(folder, ignore=(lock.path.name,))
                if present and not overwrite:
                    shown = ", ".join(present[:6]) + (", …" if len(present) > 6 else "")
                    raise ValueError(
                        f"run folder {folder} is not empty (it holds {shown}): a new run would replace what is "
                        f"there. Pass --resume {folder} to continue the run in it, --overwrite to replace it, or "
                        "choose another --out"
                    )
                for name in RUN_OUTPUTS:
                    path = folder / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            remove_temp_files(folder)
            yield folder
    finally:
        if created:  # a run that failed before writing anything (bad data, say) leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def claim_output_folder(folder: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while a command writes its outputs there (``analyze --out``, ``sr eval
    --save-images``): a second process is refused with :class:`FolderLockedError` naming the holder.

    Temporary files a killed writer left are removed once the lock is held. A folder this call created
    is removed again if the command leaves it empty (it failed before writing).
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        with FolderLock(folder, purpose=purpose):
            remove_temp_files(folder)
            yield folder
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
