"""The benchmark runs end to end on a tiny sweep and writes valid JSON, Markdown and PNG files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mirrorla.bench import ops, report
from mirrorla.bench.worker import _extrapolate, _skip_reason
from mirrorla.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_bench_ops_tiny_sweep_writes_json_md_png(tmp_path):
    argv = ["bench", "ops", "--sizes", "16,64", "--methods", "linear_relu,mirror", "--dim", "32", "--heads", "2"]
    argv += ["--repeats", "1", "--threads", "1", "--no-isolate", "--no-progress", "--gemm-size", "256"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "ops.json").read_text())
    assert payload["machine"]["torch_threads"] == 1 and payload["machine"]["cpu_model"]
    made_by = payload["machine"]["provenance"]  # what produced the numbers: code, versions, SIMD level
    assert made_by["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "commit" in made_by
    assert payload["gemm"]["gflops_best"] > 0
    kinds = {(r["kind"], r["method"]) for r in payload["results"]}
    assert kinds == {
        ("projections", "projections"),
        ("sdpa", "sdpa"),
        ("layer", "linear_relu"),
        ("core", "linear_relu"),
        ("layer", "mirror"),
        ("core", "mirror"),
    }
    assert len(payload["results"]) == 12
    for r in payload["results"]:
        assert r["status"] == "ok", r
        for mode in ("fwd", "fwdbwd"):
            t = r[mode]
            assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
        assert r["macs"] > 0
    # Analytic check of the counted MACs: projections 4·N·C² (B=1, C=32); SDPA 2·H·N²·D.
    proj = next(r for r in payload["results"] if r["kind"] == "projections" and r["N"] == 64)
    assert proj["macs"] == 4 * 64 * 32 * 32
    layer = next(
        r for r in payload["results"] if r["method"] == "linear_relu" and r["kind"] == "layer" and r["N"] == 64
    )
    # + the linear-attention core φKᵀV and φQ·S̄ (2·N·H·D·D), + N·H·D if the denominator φQ·z̄ is a matmul.
    base = 4 * 64 * 32 * 32 + 2 * 64 * 2 * 16 * 16
    assert base <= layer["macs"] <= base + 64 * 2 * 16
    assert len(payload["targets"]) == 5
    assert "Forward latency" in (tmp_path / "ops.md").read_text()
    for name in ("ops_layers.png", "ops_cores.png"):
        _check_png(tmp_path / name)


@pytest.mark.slow
def test_bench_models_tiny_sweep(tmp_path):
    argv = ["bench", "models", "--models", "vit_tiny_patch16_224,vit_tiny_patch16_224:mirror"]
    argv += ["--resolutions", "32,64", "--repeats", "1", "--threads", "1", "--no-isolate", "--no-progress"]
    argv += ["--gemm-size", "256"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "models.json").read_text())
    assert len(payload["results"]) == 4
    assert all(r["status"] == "ok" and r["fwd"]["median_ms"] > 0 for r in payload["results"])
    _check_png(tmp_path / "models.png")


def test_fit_exponent_recovers_power_laws():
    xs = [1024, 4096, 16384, 65536]
    assert report.fit_exponent(xs, [3e-5 * x**2 for x in xs]) == pytest.approx(2.0)
    assert report.fit_exponent(xs, [5 + 0 * x for x in xs]) == pytest.approx(0.0)
    assert report.fit_exponent(xs, [7e-3 * x**1.04 for x in xs]) == pytest.approx(1.04)
    assert report.fit_exponent([10], [1]) is None


def _rec(kind, method, n, fwd, fwdbwd=None, mem=None, macs=None):
    t = lambda ms: {"median_ms": ms, "min_ms": ms, "max_ms": ms, "repeats": 1}  # noqa: E731
    return {
        "kind": kind, "method": method, "N": n, "status": "ok", "note": "", "batch": 1, "macs": macs,
        "fwd": t(fwd), "fwdbwd": t(fwdbwd or 3 * fwd), "mem_fwd_bytes": mem, "mem_fwdbwd_bytes": mem,
    }  # fmt: skip


def _eager_records(n):
    """Synthetic eager cases at N = n: time ∝ N (linear layers), N² (softmax, SDPA)."""
    s = n / 16384
    return [
        _rec("layer", "mirror", n, 110 * s, 330 * s, mem=2**20 * n, macs=int(1e9 * s)),
        _rec("layer", "linear_relu", n, 100 * s, 300 * s, mem=2**20 * n),
        _rec("layer", "softmax", n, 50 * s * s, 150 * s * s),
        _rec("projections", "projections", n, 100 * s),
        _rec("core", "mirror", n, 10 * s),
        _rec("sdpa", "sdpa", n, 700 * s * s),
    ]


def test_targets_and_crossover_from_synthetic_results():
    res = [r for n in (4096, 16384, 65536) for r in _eager_records(n)]
    ratio, floor, core, memory, share = report.evaluate_targets(res, gemm_gflops=100.0, linear_methods=["mirror"])
    assert ratio["value"] == pytest.approx(1.1) and ratio["met"]
    assert floor["value"] == pytest.approx(1.1) and floor["met"]
    assert core["value"] == pytest.approx(70) and core["met"]
    assert memory["value"] == pytest.approx(1.0) and memory["met"]
    # 4 GMACs in 0.44 s = 18.2 GFLOP/s of a 100 GFLOP/s peak: missed.
    assert share["value"] == pytest.approx(2 * 4e9 / 0.44 / 1e9 / 100) and share["met"] is False
    cross = report.crossovers(res, "fwd")
    # softmax 50·s², mirror 110·s: equal at s = 2.2, i.e. N ≈ 36,000 (log-log interpolation).
    assert 16384 < cross["mirror"]["n"] < 65536
    assert math.isclose(cross["mirror"]["n"], 2.2 * 16384, rel_tol=0.05)


def test_skip_policy_extrapolates_earlier_sizes():
    assert _extrapolate([(1000, 1.0), (2000, 4.0)], 4000, 1.0) == pytest.approx(16.0)
    assert _extrapolate([(1000, 1.0)], 4000, 2.0) == pytest.approx(16.0)
    settings = {"warmup": 1, "min_repeats": 3, "max_case_seconds": 60}
    history = [{"N": 1000, "seconds_per_run": 1.0}, {"N": 2000, "seconds_per_run": 4.0}]
    assert _skip_reason({"N": 4000}, history, settings, None).startswith("skipped: predicted")
    assert _skip_reason({"N": 2500}, history, settings, None) is None
    # No history: MACs at a quarter of the GEMM peak decide.
    settings["gemm_gflops"] = 100.0
    assert _skip_reason({"N": 1}, [], settings, macs=10**13) is not None
    assert _skip_reason({"N": 1}, [], settings, macs=10**6) is None


def test_compiled_rows_get_their_own_targets_and_first_call_table():
    res = []
    for n in (4096, 16384, 65536):
        s = n / 16384
        res += _eager_records(n)
        for kind, method, fwd in (("layer", "mirror", 80), ("layer", "linear_relu", 100), ("core", "mirror", 5)):
            rec = _rec(
                kind, method + ops.COMPILED, n, fwd * s, 3 * fwd * s, macs=int(1e9 * s) if kind == "layer" else None
            )
            res.append(dict(rec, compiled=True, first_fwd_s=20.0, first_fwdbwd_s=45.0))
    targets = {t["target"]: t for t in report.evaluate_targets(res, gemm_gflops=100.0, linear_methods=["mirror"])}
    assert len(targets) == 9  # four timing targets per path, one memory target
    ratio = targets["MirrorLA layer fwd+bwd / ReLU linear layer fwd+bwd (N=16,384, compiled)"]
    assert ratio["value"] == pytest.approx(0.8) and ratio["met"]
    core = targets["SDPA fwd / MirrorLA core fwd on the same q,k,v (N=16,384, compiled)"]
    assert core["value"] == pytest.approx(140)  # eager SDPA against the compiled core
    assert targets["MirrorLA layer fwd+bwd / ReLU linear layer fwd+bwd (N=16,384)"]["value"] == pytest.approx(1.1)
    table = report.first_call_table(res)
    assert table.count("(compiled)") == 9 and "| 20.0 | 80.0 | 45.0 | 240.0 |" in table
    assert report.first_call_table([r for r in res if not r.get("compiled")]) == ""


def test_plan_adds_compiled_groups():
    groups = ops.plan_ops_cases(["mirror", "pola"], [196, 1024], compiled=["mirror"])
    compiled = [c for g in groups for c in g if c.get("compiled")]
    assert {c["method"] for c in compiled} == {"mirror (compiled)"}
    assert {(c["kind"], c["N"]) for c in compiled} == {(k, n) for k in ("layer", "core") for n in (196, 1024)}
    assert not any(c.get("compiled") for c in groups[0] + groups[1])  # projections and SDPA stay eager


def test_missed_targets_carry_the_measured_reason():
    res = []
    for n in (16384, 65536):
        s = n / 16384
        res += [
            _rec("layer", "mirror", n, 160 * s, 420 * s, macs=int(1e9 * s)),
            _rec("layer", "linear_relu", n, 120 * s, 300 * s, macs=int(1e9 * s)),
            _rec("projections", "projections", n, 100 * s, macs=int(1e9 * s)),
            _rec("core", "mirror", n, 40 * s),
            _rec("core", "linear_relu", n, 20 * s),
            _rec("sdpa", "sdpa", n, 700 * s * s),
        ]
        res.append(dict(_rec("layer", "mirror" + ops.COMPILED, n, 130 * s, 330 * s), compiled=True))
        res.append(dict(_rec("layer", "linear_relu" + ops.COMPILED, n, 110 * s, 300 * s), compiled=True))
    targets = {t["target"]: t for t in report.evaluate_targets(res, gemm_gflops=100.0, linear_methods=["mirror"])}
    ratio = targets["MirrorLA layer fwd+bwd / ReLU linear layer fwd+bwd (N=16,384)"]
    assert ratio["met"] is False and ratio["value"] == pytest.approx(1.4)
    assert ratio["reason"].startswith("met by the compiled path (1.1);") and "adds 120 ms" in ratio["reason"]
    assert "forward alone 40 vs 20 ms" in ratio["reason"]
    floor = targets["MirrorLA layer fwd / its q,k,v,output projections fwd (N=16,384)"]
    assert floor["met"] is False and "alone is 1.20× these projections" in floor["reason"]
    assert "adds 40 ms = 0.40× them" in floor["reason"]
    core = targets["SDPA fwd / MirrorLA core fwd on the same q,k,v (N=16,384)"]
    assert core["value"] == pytest.approx(17.5) and "the ReLU core gives 35.0× (20 ms)" in core["reason"]
    share = targets["MirrorLA layer fwd share of the GEMM peak (N=65,536)"]
    # 4 GMACs: projections 400 ms -> 0.2 of 100 GFLOP/s, ReLU layer 480 ms -> 0.17.
    assert "projections alone reach 0.20" in share["reason"] and "ReLU linear layer 0.17" in share["reason"]
    assert targets["MirrorLA layer fwd+bwd / ReLU linear layer fwd+bwd (N=16,384, compiled)"]["reason"] == ""  # met
    table = report.targets_table(list(targets.values()))
    assert "why missed (measured in this run)" in table and "met by the compiled path" in table
    met_only = [dict(t, met=True, reason="") for t in targets.values()]
    assert "why missed" not in report.targets_table(met_only)


def test_target_cases_cover_what_the_targets_read():
    from mirrorla.bench.targets import plan_target_cases

    cases = plan_target_cases(256, 1024, compiled=True)
    keys = {(c["kind"], c["method"], c["N"]) for c in cases}
    for suffix in ("", ops.COMPILED):
        for name in ("mirror", "linear_relu"):
            assert {("layer", name + suffix, 256), ("core", name + suffix, 256), ("layer", name + suffix, 1024)} <= keys
    assert {("projections", "projections", 256), ("sdpa", "sdpa", 256), ("projections", "projections", 1024)} <= keys
    assert not any(c["kind"] == "sdpa" and "fwdbwd" in c["modes"] for c in cases)  # SDPA backward is not read
    assert len(plan_target_cases(256, 1024, compiled=False)) == 9


def test_bench_targets_quick_end_to_end(tmp_path):
    argv = ["bench", "targets", "--quick", "--threads", "1", "--repeats", "2", "--gemm-size", "128"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "targets.json").read_text())
    targets = {t["target"]: t for t in payload["targets"]}
    assert len(targets) == 4  # three timing targets and the GEMM share; memory is bench ops'
    assert all(r[m]["repeats"] == 2 for r in payload["results"] for m in ("fwd", "fwdbwd") if m in r)
    md = (tmp_path / "targets.md").read_text()
    assert "interleaved rounds" in md and "MirrorLA layer fwd+bwd / ReLU linear layer fwd+bwd (N=256)" in md
    # The targets are set at 16,384 and 65,536 tokens: a quick run times 256 and 1,024, so it reports none of
    # them as met or missed, says so, and keeps the ratio it did measure in the detail.
    for t in targets.values():
        assert t["met"] is None and t["value"] is None and t["status"] == "not measured at this size"
        assert "the target is set at N = " in t["detail"] and "value there: " in t["detail"]
    assert "MISSED" not in md and "| not measured at this size |" in md
    assert "Quick preset: a smoke run" in md and "docs/results/efficiency.md" in md


def test_bench_targets_rejects_sizes_in_the_wrong_order(tmp_path, capsys):
    assert main(["bench", "targets", "--size", "4096", "--share-size", "1024", "--out", str(tmp_path)]) == 2
    assert "--share-size (1024) must be larger than --size (4096)" in capsys.readouterr().err
