"""Downloads that leave nothing behind when they fail (no network, a proxy refusing, a server error)."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import urllib.error
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DOWNLOAD_ERRORS", "removing_created_dirs"]

#: What a failed download raises: no network or DNS (URLError), a dropped or refused connection, a timeout,
#: a broken HTTP exchange.
DOWNLOAD_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def _missing(path: Path) -> list[Path]:
    """``path`` and each of its ancestors that does not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


@contextlib.contextmanager
def removing_created_dirs(path: str | Path) -> Iterator[None]:
    """Run a download into ``path``; if it raises, remove ``path`` (with what the attempt wrote there) and the
    ancestors the attempt created, when ``path`` did not exist before — so a failed first download leaves no
    empty cache folder that a later run would mistake for data."""
    created = _missing(Path(path))
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
            for parent in created[1:]:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only if empty
        raise
