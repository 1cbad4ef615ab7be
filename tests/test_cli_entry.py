"""The command line as every launcher reaches it."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_cli_has_the_commands():
    """``python -m mirrorla.cli`` (as torchrun runs it) knows the same commands as the console script."""
    out = subprocess.run([sys.executable, "-m", "mirrorla.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--attention" in out.stdout


def test_a_closed_pipe_ends_quietly():
    """`mirrorla list | head -1`: the reader goes away; no BrokenPipe traceback on stderr."""
    import subprocess
    import sys

    code = "from mirrorla.cli import main; raise SystemExit(main(['list']))"
    proc = subprocess.run(
        f'{sys.executable} -c "{code}" | head -c 1', shell=True, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
