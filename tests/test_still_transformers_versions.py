"""STILL across ``transformers`` releases: the declared range, and the STILL tests rerun on older releases.

The slow tests build a scratch virtual environment per release that holds only ``transformers`` and the
small packages it pins; a ``.pth`` file puts this environment's site-packages behind them, so torch,
peft, pytest and mirrorla are reused rather than downloaded. pip needs PyPI or a mirror. Run with

    pytest -m slow tests/test_still_transformers_versions.py

``MIRRORLA_TF_VENV_DIR`` keeps the environments between runs (default: a pytest temporary folder).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from mirrorla.still.hf import TRANSFORMERS_TESTED  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STILL_TESTS = ["tests/test_still_attention.py", "tests/test_still_hf.py", "tests/test_still_train.py"]
# The declared lower bound, and the last release that passes the cache as `past_key_values` (5.24
# passes `cache`); the installed environment covers the newest.
OLDER_RELEASES = [f"{TRANSFORMERS_TESTED[0]}.0", "5.23.0"]


def test_declared_range_matches_tested():
    """pyproject's extras and docs/still.md state the lower bound that the slow tests run."""
    pyproject = (REPO / "pyproject.toml").read_text()
    extras = re.findall(r'"transformers([^"]*)"', pyproject)
    # the extras llm, llm-real and test
    assert len(extras) == 3 and all(spec == f">={TRANSFORMERS_TESTED[0]}" for spec in extras), extras
    docs = (REPO / "docs" / "still.md").read_text()
    assert f"transformers>={TRANSFORMERS_TESTED[0]}" in docs and TRANSFORMERS_TESTED[1] in docs


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def _scratch_python(root: Path, version: str) -> Path:
    """A virtual environment with ``transformers==version`` in front of this environment's packages."""
    venv = root / f"transformers-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        made = _run([sys.executable, "-m", "venv", str(venv)], timeout=600)
        assert made.returncode == 0, f"python -m venv {venv} failed:\n{made.stderr[-3000:]}"
    site_packages = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60
        ).stdout.strip()
    )
    link = site_packages / "zz_mirrorla_parent_env.pth"
    link.unlink(missing_ok=True)  # install against the scratch environment alone, so pip leaves ours untouched
    installed = _run([str(python), "-m", "pip", "install", "-q", f"transformers=={version}"], timeout=1200)
    assert installed.returncode == 0, (
        f"pip could not install transformers=={version} into {venv} (needs PyPI or a mirror):\n"
        f"{installed.stdout[-2000:]}{installed.stderr[-2000:]}"
    )
    parent = sysconfig.get_paths()["purelib"]  # torch, peft, pytest, mirrorla of the running environment
    link.write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("version", OLDER_RELEASES)
def test_still_tests_pass_on_older_transformers(version, tmp_path_factory):
    root = Path(os.environ.get("MIRRORLA_TF_VENV_DIR") or tmp_path_factory.mktemp("transformers-venvs"))
    python = _scratch_python(root, version)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    found = _run([str(python), "-c", "import transformers as t; print(t.__version__, t.__file__)"], 120, env=env)
    reported = found.stdout.split()
    assert len(reported) == 2 and reported[0] == version and Path(reported[1]).is_relative_to(python.parents[1]), (
        f"the scratch environment at {python.parents[1]} imports {found.stdout!r} {found.stderr[-2000:]}"
    )
    tests = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *STILL_TESTS], 1800, env=env, cwd=REPO)
    assert tests.returncode == 0, (
        f"STILL tests on transformers {version}:\n{tests.stdout[-6000:]}{tests.stderr[-2000:]}"
    )
