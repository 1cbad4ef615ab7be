"""Numerics fingerprint (scripts/numerics_fingerprint.py): a seeded forward and backward of every registered
attention and every model family, per dtype, against tests/data/numerics_fingerprint.json.

Why two records (the script's docstring has the details): exact SHA-256 hashes catch any change of a single bit —
the reordered sums that stopped published curves from reproducing — but only on the numerics key (torch version,
``torch.backends.cpu.get_cpu_capability()``, CPU model) they were recorded on, since AVX2 and AVX-512 kernels sum
in different orders (8 of the 40 hashes differ between the two on the machine that recorded them). Summaries
(mean |t| and a ±1-weighted mean of the output, the input gradient and the parameter gradients) are compared on
every machine with a tolerance 300× above the AVX2/AVX-512 difference and catch a real change of the math.

Checked against history on the recording machine: the code before b21151c (what produced the published
Fashion-MNIST, SR and LRA runs) differs in 32 of the 40 exact hashes (every linear attention and model; softmax,
window softmax and nala unchanged) and the code before 24cebb1 in the MirrorLA ones, while every summary stays
within tolerance — those commits changed last bits only, which is what this test exists to make visible.

A change that fails this test is made knowingly: rerun ``python scripts/numerics_fingerprint.py --write``, commit
the file, and say on the results pages which published numbers main no longer reproduces bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fp():
    spec = importlib.util.spec_from_file_location("numerics_fingerprint", ROOT / "scripts" / "numerics_fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stored(fp):
    return json.loads(fp.FILE.read_text())


@pytest.fixture(scope="module")
def current(fp):
    return fp.fingerprint()


def test_every_attention_and_model_family_has_a_fingerprint(fp, stored):
    import mirrorla

    names = set(fp.cases())
    assert {f"attention/{n}" for n in mirrorla.list_attentions()} <= names
    assert names == set(stored["summary"]), "a new or removed case: regenerate with --write"
    for key, hashes in stored["exact"].items():
        assert set(hashes) == names, key


def test_numerics_match_the_committed_fingerprint(fp, stored, current):
    key = fp.numerics_key()
    approx, exact = fp.compare(stored, current, key)
    assert approx == [], "numerics changed beyond the cross-CPU tolerance: " + "; ".join(approx[:5])
    assert exact == [], f"bits changed on {key}: " + ", ".join(exact)
    if key not in stored["exact"]:
        warnings.warn(f"no exact fingerprints for {key}; only the summaries were compared", stacklevel=1)


def test_a_changed_constant_is_caught(fp, stored, current, monkeypatch):
    """linear_relu with its denominator's eps at 1e-2 instead of 1e-6: both records notice."""
    import mirrorla

    real = mirrorla.create_attention
    monkeypatch.setattr(mirrorla, "create_attention", lambda name, *a, **kw: real(name, *a, **{**kw, "eps": 1e-2}))
    changed = fp.fingerprint(["attention/linear_relu"])
    key = next(iter(stored["exact"]))
    approx, exact = fp.compare(stored, changed, key)
    assert any("attention/linear_relu float64" in line for line in approx)
    assert exact == ["attention/linear_relu float32", "attention/linear_relu float64"]
    assert current["attention/linear_relu"] != changed["attention/linear_relu"]
