"""The command line as every launcher reaches it."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_cli_has_the_commands():
    """``python -m mirrorla.cli`` (as torchrun runs it) knows the same commands as the console script."""
    out = subprocess.run([sys.executable, "-m", "mirrorla.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--attention" in out.stdout
