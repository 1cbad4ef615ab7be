"""``mirrorla bench sr``: whole-image SR inference against output size, its budget and skip rules.

The end-to-end runs use sr_tiny at scale 2 (outputs 16, 32, 48: N = 64, 256, 576 tokens). The staging and
skip logic is also checked with a stand-in worker returning hand-made timings, so that a test does
not depend on how fast this machine is.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import bench_usage_error

from mirrorla.bench import sr
from mirrorla.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["bench", "sr", "--model", "sr_tiny", "--scale", "2", "--attentions", "softmax", "mirror"]
TINY += ["--threads", "1", "--no-progress", "--gemm-size", "128"]


def test_bench_sr_tiny_run_writes_table_json_and_figure(tmp_path, capsys):
    # Two sizes: each size is one worker process (about 7 s of imports on a busy 2-core machine).
    assert main([*TINY, "--sizes", "16", "48", "--repeats", "1", "--no-isolate", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "sr.json").read_text())
    assert payload["kind"] == "sr" and payload["command"].startswith("mirrorla bench sr --model sr_tiny")
    assert payload["machine"]["torch_threads"] == 1 and payload["machine"]["cpu_model"]
    assert payload["settings"]["sizes"] == ["16x16", "48x48"]
    assert payload["budget"]["max_seconds"] == 60 and payload["budget"]["max_memory_bytes"] > 0
    results = payload["results"]
    assert [(r["method"], r["size"]) for r in results] == [
        (m, s) for s in ("16x16", "48x48") for m in ("softmax", "mirror")
    ]
    for r in results:
        assert r["status"] == "ok" and r["within_budget"] is True, r
        assert r["N"] == r["lr_w"] * r["lr_h"] == (r["out_w"] // 2) ** 2
        assert 0 < r["fwd"]["min_ms"] <= r["fwd"]["median_ms"] <= r["fwd"]["max_ms"]
        assert r["fwd"]["repeats"] == 1 and r["mem_fwd_bytes"] is not None and r["macs"] > 0
    # Softmax's attention matmuls grow as N²: 9× the tokens (16² → 48²) costs it more than 9× the MACs.
    soft = {r["N"]: r["macs"] for r in results if r["method"] == "softmax"}
    mirror = {r["N"]: r["macs"] for r in results if r["method"] == "mirror"}
    assert soft[576] / soft[64] > 9 * 1.5 and mirror[576] / mirror[64] == pytest.approx(9, rel=0.05)
    assert payload["largest_within_budget"]["mirror"]["size"] == "48x48"
    assert len(payload["targets"]) == 2
    md = (tmp_path / "sr.md").read_text()
    assert "| softmax |" in md and "48×48 (N=576)" in md and "**Targets**" in md
    assert "**Targets**" in printed and "not measured: 1024×1024 not in --sizes" in printed
    with open(tmp_path / "sr.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_bench_sr_tiny_budget_skips_without_running(tmp_path):
    # 1 µs per image: the first size is predicted over budget from its MACs and the GEMM peak, so
    # nothing runs, and every larger size is skipped after it.
    assert main([*TINY, "--sizes", "16", "32", "48", "--max-seconds", "1e-6", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "sr.json").read_text())
    by = {(r["method"], r["size"]): r for r in payload["results"]}
    for method in ("softmax", "mirror"):
        first = by[(method, "16x16")]
        assert first["status"] == "skipped" and first["fwd"] is None
        assert re.search(
            r"predicted .* per image > --max-seconds 1e-06 \(MACs at 25% of the GEMM peak\)", first["note"]
        )
        for size in ("32x32", "48x48"):
            rec = by[(method, size)]
            assert rec["status"] == "skipped" and rec["note"].startswith("skipped: 16×16 was skipped"), rec
            assert rec["predicted_seconds"] > first["predicted_seconds"]
        assert payload["largest_within_budget"][method]["size"] is None
    assert all(t["met"] is None for t in payload["targets"])
    assert (tmp_path / "sr.png").read_bytes()[:8] == PNG_MAGIC


def _fake_worker(times: dict, memory: dict, calls: list):
    """A stand-in for run_cases: (method, N) → seconds and bytes, recording which cases were run."""

    def run_cases(task, groups, settings, *, isolate=True, progress=True):
        assert task == "sr" and settings["min_repeats"] == 1
        out = []
        for (case,) in groups:
            calls.append((case["method"], case["size"]))
            ms = 1e3 * times[(case["method"], case["N"])]
            t = {"median_ms": ms, "min_ms": ms, "max_ms": ms, "repeats": 1}
            mem = memory.get((case["method"], case["N"]), 2**18)
            out.append(dict(case, status="ok", note="", fwd=t, fwdbwd=None, mem_fwd_bytes=mem, mem_fwdbwd_bytes=None))
        return out, None

    return run_cases


def test_sweep_skips_predicted_and_measured_overruns_and_everything_after(monkeypatch):
    cases = sr.plan_sr_cases(
        "sr_tiny", ["softmax", "mirror", "linear_relu", "nala"], [(64, 64), (16, 16), (48, 48), (32, 32)], 2
    )
    ns = (64, 256, 576, 1024)  # outputs 16, 32, 48, 64 at scale 2
    times, memory = {}, {}
    for n in ns:
        times[("softmax", n)] = 0.1 * (n / 64) ** 2  # 0.1, 1.6, 8.1 s: 48² predicted over 5 s
        times[("mirror", n)] = 0.1 * n / 64
        memory[("mirror", n)] = {64: 2**18, 256: 2**20, 576: 6 * 2**20, 1024: 0}[n]  # 64² predicted > 12 MiB
        times[("linear_relu", n)] = {64: 0.1, 256: 0.2, 576: 6.0, 1024: 7.0}[n]  # 48²: measured over 5 s
    calls: list = []
    monkeypatch.setattr(sr, "run_cases", _fake_worker(times, memory, calls))
    budget = sr.SRBudget(max_seconds=5.0, max_memory_bytes=12 * 2**20)
    errors = {"nala": "ValueError: head_dim % 4"}
    res = sr.run_sr_sweep(cases, budget, {}, build_errors=errors, log=lambda line: None)
    by = {(r["method"], r["out_w"]): r for r in res}
    assert [(r["method"], r["out_w"]) for r in res] == [
        (m, w) for w in (16, 32, 48, 64) for m in ("softmax", "mirror", "linear_relu", "nala")
    ]

    skipped = by[("softmax", 48)]
    assert skipped["status"] == "skipped" and skipped["predicted_seconds"] == pytest.approx(8.1)
    assert "predicted 8.1 s per image > --max-seconds 5" in skipped["note"]
    assert by[("softmax", 64)]["note"].startswith("skipped: 48×48 was skipped")
    assert by[("mirror", 48)]["within_budget"] is True
    # Peaks 1 MiB at N=256 and 6 MiB at N=576: the log-log line through them gives ~21 MiB at N=1024.
    mirror64, slope = by[("mirror", 64)], math.log(6) / math.log(576 / 256)
    assert mirror64["status"] == "skipped"
    assert mirror64["predicted_memory_bytes"] == pytest.approx(6 * 2**20 * (1024 / 576) ** slope)
    assert "GiB > --max-memory-gb" in mirror64["note"]
    assert by[("linear_relu", 48)]["status"] == "ok" and by[("linear_relu", 48)]["within_budget"] is False
    assert "over budget: 6 s per image > --max-seconds 5" in by[("linear_relu", 48)]["note"]
    assert by[("linear_relu", 64)]["note"].startswith("skipped: 48×48 ran over budget")
    assert all(by[("nala", w)]["status"] == "error" for w in (16, 32, 48, 64))
    # Nothing skipped or unbuildable reached the worker.
    assert sorted(calls) == sorted(
        [("softmax", s) for s in ("16x16", "32x32")]
        + [("mirror", s) for s in ("16x16", "32x32", "48x48")]
        + [("linear_relu", s) for s in ("16x16", "32x32", "48x48")]
    )

    largest = sr.largest_within_budget(res)
    assert largest["softmax"]["size"] == "32x32" and largest["mirror"]["size"] == "48x48"
    assert largest["linear_relu"]["size"] == "32x32" and largest["nala"]["size"] is None
    assert largest["mirror"]["ratio_to_reference"] == pytest.approx(48**2 / 32**2)
    assert not largest["mirror"]["reached_largest_tried"]


def test_prediction_follows_the_mac_ratio_when_the_fitted_slope_lags():
    # Two small sizes with a slope of 0.5 (fixed costs dominate), but 25× the MACs at the next size.
    def rec(n, seconds, macs):
        return {
            "N": n,
            "out_w": n,
            "out_h": 1,
            "fwd": {"median_ms": 1e3 * seconds},
            "mem_fwd_bytes": 100 * n,
            "macs": macs,
        }

    measured = [rec(64, 0.1, 10**6), rec(256, 0.2, 4 * 10**6)]
    p = sr.predict_case({"N": 1024, "macs": 10**8}, measured, gemm_gflops=None)
    assert p.seconds == pytest.approx(0.2 * 25) and "MAC ratio" in p.basis
    assert p.memory_bytes == pytest.approx(100 * 1024)  # peaks ∝ N: the log-log line
    p = sr.predict_case({"N": 1024, "macs": 8 * 10**6}, measured, gemm_gflops=None)
    assert p.seconds == pytest.approx(0.4) and "extrapolation" in p.basis
    first = sr.predict_case({"N": 64, "macs": 10**9}, [], gemm_gflops=100.0)
    assert first.seconds == pytest.approx(2e9 / 25e9) and first.memory_bytes is None


def _record(method, side, seconds=None, status="ok", within=True, predicted=None):
    fwd = None if seconds is None else {"median_ms": 1e3 * seconds, "min_ms": 1e3 * seconds, "max_ms": 1e3 * seconds}
    return {
        "method": method, "size": f"{side}x{side}", "out_w": side, "out_h": side, "lr_w": side // 4,
        "lr_h": side // 4, "N": (side // 4) ** 2, "pixels": side * side, "status": status,
        "fwd": fwd, "mem_fwd_bytes": 2**20 if status == "ok" else None,
        "within_budget": within if status == "ok" else None, "predicted_seconds": predicted, "note": "",
    }  # fmt: skip


def test_largest_image_and_targets_from_hand_made_records():
    res = [
        _record("softmax", 256, 2.0),
        _record("softmax", 512, 40.0),
        _record("softmax", 1024, status="skipped", predicted=700.0),
        _record("softmax", 2048, status="skipped", predicted=11000.0),
        _record("mirror", 256, 0.5),
        _record("mirror", 512, 2.0),
        _record("mirror", 1024, 8.0),
        _record("mirror", 2048, 35.0),
        _record("linear_relu", 256, 0.5),
        _record("linear_relu", 512, 70.0, within=False),
        _record("linear_relu", 1024, status="skipped"),
    ]
    largest = sr.largest_within_budget(res)
    assert largest["softmax"]["size"] == "512x512" and largest["softmax"]["ratio_to_reference"] == 1
    assert largest["mirror"]["size"] == "2048x2048" and largest["mirror"]["reached_largest_tried"]
    assert largest["mirror"]["ratio_to_reference"] == 16
    assert largest["linear_relu"]["size"] == "256x256" and largest["linear_relu"]["ratio_to_reference"] == 0.25

    speed, pixels = sr.evaluate_sr_targets(res, largest)
    assert speed["value"] is None and speed["met"] is None
    assert "softmax skipped at 1024×1024, predicted 700 s per image" in speed["detail"]
    assert "predicted ratio ≈ 88×" in speed["detail"]
    assert pixels["value"] == 16 and pixels["met"] is True and "lower bound" in pixels["detail"]

    # Softmax measured at 1024² (over budget) and 12× slower: the speed-up is measured and met; mirror's
    # largest is the largest size tried and only 4× softmax's: undecided, not missed.
    res[2] = _record("softmax", 1024, 96.0, within=False)
    res[7] = _record("mirror", 2048, status="skipped", predicted=61.0)
    res[1] = _record("softmax", 512, 40.0)
    largest = sr.largest_within_budget(res)
    speed, pixels = sr.evaluate_sr_targets(res, largest)
    assert speed["value"] == pytest.approx(12) and speed["met"] is True
    assert pixels["value"] == 4 and pixels["met"] is False  # mirror stopped at 1024² below the ceiling

    only_mirror = [r for r in res if r["method"] == "mirror"]
    speed, pixels = sr.evaluate_sr_targets(only_mirror, sr.largest_within_budget(only_mirror))
    assert speed["met"] is None and "softmax not in --attentions" in speed["detail"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--sizes", "30"], "--sizes: output size 30×30 is not a multiple of scale 4"),
        (["--sizes", "512x30"], "use e.g. 28 or 32"),
        (["--sizes", "0"], "argument --sizes: expected output sizes like 512 or 768x512"),
        (["--sizes", "abc"], "argument --sizes"),
        (["--model", "sr_huge"], "--model: unknown SR model 'sr_huge'; valid models: sr_tiny, sr_small, sr_light"),
        (["--scale", "5"], "--scale: the SR network upscales by 2, 3, 4, got 5"),
        (["--attentions", "softmax", "nope"], "--attentions: no registered attention matches 'nope'"),
        (["--max-seconds", "0"], "argument --max-seconds"),
    ],
)
def test_bad_sr_input_is_one_line(tmp_path, capsys, extra, expected):
    assert expected in bench_usage_error("sr", extra, tmp_path, capsys)
