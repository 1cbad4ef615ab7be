"""The ``mirrorla`` console script (``mirrorla.cli:main``); the commands live in :mod:`mirrorla.commands`.

``python -m mirrorla.cli`` runs the same command line (torchrun: ``torchrun ... -m mirrorla.cli train``).
"""

from __future__ import annotations

import sys

from mirrorla.commands import Interrupted, UsageError, build_parser, main

__all__ = ["Interrupted", "UsageError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
