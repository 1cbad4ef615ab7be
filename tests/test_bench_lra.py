"""``mirrorla bench lra``: a training step of the sequence model against length, its stages, skips and targets.

One end-to-end run through the command (seq_tiny, L = 64 and 128, softmax and mirror, one repeat: two worker
processes, one per length, most of this file's time). The staging, skip prediction, exponents and targets are
checked on hand-made numbers with a stand-in worker, so no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import bench_usage_error

from mirrorla.bench import lra
from mirrorla.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plan_orders_lengths_and_checks_input():
    cases = lra.plan_lra_cases("seq_tiny", ["softmax", "mirror", "softmax"], [512, 64, 512, 128], batch=2)
    assert [(c["method"], c["N"]) for c in cases] == [
        (m, n) for n in (64, 128, 512) for m in ("softmax", "mirror")
    ]  # fmt: skip
    assert all(c["kind"] == "lra" and c["model"] == "seq_tiny" and c["batch"] == 2 for c in cases)
    with pytest.raises(ValueError, match="unknown sequence model 'seq_huge'; valid models: seq_tiny, seq_small"):
        lra.plan_lra_cases("seq_huge", ["mirror"], [64])
    with pytest.raises(ValueError, match="positive integers, got 0"):
        lra.plan_lra_cases("seq_tiny", ["mirror"], [64, 0])
    with pytest.raises(ValueError, match="nope"):
        lra.plan_lra_cases("seq_tiny", ["nope"], [64])


def test_build_case_runs_a_training_step_that_changes_the_weights():
    # L = 49: an awkward length; the step must update the parameters (the AdamW step runs) and leave no grads.
    case = lra.plan_lra_cases("seq_tiny", ["mirror"], [49])[0]
    built = lra.build_lra_case(case, {"device": "cpu", "dtype": "float32", "seed": 0})
    assert built.fwd is None and built.macs is None
    closed_over = {type(c.cell_contents).__name__: c.cell_contents for c in built.fwdbwd.__closure__}
    opt = closed_over["AdamW"]  # the step closes over the model, the tokens and the optimiser
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(len(opt.state[p]) > 0 for p in params)  # state created at build time: steady-state steps
    before = [p.detach().clone() for p in params]
    built.fwdbwd()
    assert all(p.grad is None for p in params)
    assert sum(not p.equal(b) for p, b in zip(params, before, strict=True)) > len(params) // 2


def test_bench_lra_tiny_run_writes_tables_json_md_and_figure(tmp_path, capsys):
    argv = ["bench", "lra", "--lengths", "64,128", "--attentions", "softmax", "mirror", "--repeats", "1"]
    argv += ["--threads", "1", "--no-progress", "--gemm-size", "128", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "lra.json").read_text())
    assert payload["kind"] == "lra" and payload["command"] == "mirrorla " + " ".join(argv)
    assert payload["machine"]["torch_threads"] == 1 and payload["machine"]["cpu_model"]
    s = payload["settings"]
    assert s["lengths"] == [64, 128] and s["attentions"] == ["softmax", "mirror"] and s["batch"] == 1
    assert s["model"] == "seq_tiny" and s["vocab_size"] == 256 and s["num_classes"] == 10
    assert payload["budget"]["max_case_seconds"] == 120 and payload["budget"]["max_memory_bytes"] > 0
    assert payload["linear_attentions"] == ["mirror"] and payload["wall_seconds"] > 0
    results = payload["results"]
    assert [(r["method"], r["N"]) for r in results] == [(m, n) for n in (64, 128) for m in ("softmax", "mirror")]
    for r in results:
        assert r["status"] == "ok" and r["within_budget"] is True, r
        assert 0 < r["step"]["min_ms"] <= r["step"]["median_ms"] <= r["step"]["max_ms"]
        assert r["step"]["repeats"] == 1 and r["mem_step_bytes"] is not None and r["macs"] > 0
        assert "fwd" not in r and "fwdbwd" not in r
    # Softmax's L² matmuls: twice the tokens costs it more than twice the forward MACs; mirror's are linear.
    macs = {(r["method"], r["N"]): r["macs"] for r in results}
    assert macs[("softmax", 128)] / macs[("softmax", 64)] > 2.1
    assert macs[("mirror", 128)] / macs[("mirror", 64)] == pytest.approx(2, rel=0.05)
    for name in ("softmax", "mirror"):
        e = payload["scaling"][name]
        assert e["lengths"] == [64, 128] and e["spans_requested"] and e["token_ratio"] == 2
        assert e["time_exponent"] == pytest.approx(math.log2(e["time_ratio"]))
    assert [t["target"] for t in payload["targets"]] == [
        "mirror: time exponent", "mirror: peak-memory exponent",
        "softmax: time exponent (~quadratic)", "softmax: peak-memory exponent (~quadratic)",
    ]  # fmt: skip
    assert all(t["met"] in (True, False) for t in payload["targets"])
    md = (tmp_path / "lra.md").read_text()
    assert md.startswith(f"Command: `{payload['command']}`")
    for text in ("**Seconds per training step**", "**Peak memory per training step**", "**Scaling**", "L=128"):
        assert text in md
    assert "| softmax |" in md and "**Targets**" in md and "![lra](lra.png)" in md
    assert "**Targets**" in printed and "Softmax in this run:" in printed
    assert (tmp_path / "lra.png").read_bytes()[:8] == PNG_MAGIC


def _fake_worker(times: dict, memory: dict, calls: list):
    """A stand-in for run_lra_cases: (method, L) → seconds per step and bytes, recording what was run."""

    def run_lra_cases(groups, settings, *, progress=True, label=""):
        out = []
        for group in groups:
            for case in group:
                calls.append((case["method"], case["N"]))
                ms = 1e3 * times[(case["method"], case["N"])]
                t = {"median_ms": ms, "min_ms": ms, "max_ms": ms, "repeats": 3}
                mem = memory.get((case["method"], case["N"]), 2**20 * case["N"] / 64)
                out.append(
                    dict(case, status="ok", note="", fwd=None, fwdbwd=t, mem_fwd_bytes=None, mem_fwdbwd_bytes=mem)
                )
        return out

    return run_lra_cases


SETTINGS = {"warmup": 1, "min_repeats": 3, "repeats": 3}  # a case costs 5 steps


def test_sweep_skips_predicted_and_measured_overruns_and_everything_after(monkeypatch):
    cases = lra.plan_lra_cases("seq_tiny", ["softmax", "mirror", "linear_relu", "nala"], [256, 128, 64, 512])
    times, memory = {}, {}
    for n in (64, 128, 256, 512):
        times[("softmax", n)] = 0.1 * (n / 64) ** 2  # 0.1, 0.4 s per step; 256: 1.6 s × 5 steps > 5 s predicted
        times[("mirror", n)] = 0.1 * n / 64
        memory[("mirror", n)] = {64: 2**20, 128: 4 * 2**20, 256: 16 * 2**20, 512: 0}[n]  # 512: 64 MiB > 40 MiB
        times[("linear_relu", n)] = {64: 0.1, 128: 0.12, 256: 1.2, 512: 1.3}[n]  # 256: 6 s for 5 steps, measured
    calls: list = []
    monkeypatch.setattr(lra, "run_lra_cases", _fake_worker(times, memory, calls))
    budget = lra.StepBudget(max_case_seconds=5.0, max_memory_bytes=40 * 2**20)
    errors = {"nala": "ValueError: no"}
    res = lra.run_lra_sweep(cases, budget, SETTINGS, build_errors=errors, log=lambda line: None)
    assert [(r["method"], r["N"]) for r in res] == [
        (m, n) for n in (64, 128, 256, 512) for m in ("softmax", "mirror", "linear_relu", "nala")
    ]
    by = {(r["method"], r["N"]): r for r in res}
    skipped = by[("softmax", 256)]
    # Log-log line through 0.1 s at 64 and 0.4 s at 128 (slope 2): 1.6 s per step, 8 s for the case's 5 steps.
    assert skipped["status"] == "skipped" and skipped["predicted_seconds"] == pytest.approx(1.6)
    assert "predicted 8 s for 5 steps > --max-case-seconds 5" in skipped["note"]
    assert by[("softmax", 512)]["note"].startswith("skipped: L=256 was skipped")
    assert by[("mirror", 256)]["within_budget"] is True
    mirror512 = by[("mirror", 512)]
    assert mirror512["status"] == "skipped" and mirror512["predicted_memory_bytes"] == pytest.approx(64 * 2**20)
    assert "GiB > --max-memory-gb" in mirror512["note"]
    assert by[("linear_relu", 256)]["status"] == "ok" and by[("linear_relu", 256)]["within_budget"] is False
    assert "over budget: 6 s for 5 steps > --max-case-seconds 5" in by[("linear_relu", 256)]["note"]
    assert by[("linear_relu", 512)]["note"].startswith("skipped: L=256 ran over budget")
    assert all(by[("nala", n)]["status"] == "error" for n in (64, 128, 256, 512))
    assert sorted(calls) == sorted(
        [("softmax", n) for n in (64, 128)] + [(m, n) for m in ("mirror", "linear_relu") for n in (64, 128, 256)]
    )


def test_prediction_follows_the_mac_ratio_when_the_fitted_slope_lags():
    def rec(n, seconds, macs):
        return {"N": n, "step": {"median_ms": 1e3 * seconds}, "mem_step_bytes": 100 * n, "macs": macs}

    # Slope log2(1.5) ≈ 0.58 from 1K to 2K (fixed costs dominate), then 4× the MACs at 4K.
    measured = [rec(1024, 0.1, 10**6), rec(2048, 0.15, 2 * 10**6)]
    p = lra.predict_step({"N": 4096, "macs": 8 * 10**6, "batch": 1}, measured, gemm_gflops=None)
    assert p.seconds == pytest.approx(0.15 * 4) and "L=2,048 time × MAC ratio" in p.basis
    assert p.memory_bytes == pytest.approx(100 * 4096)  # peaks ∝ L: the log-log line
    p = lra.predict_step({"N": 4096, "macs": 2 * 10**6, "batch": 1}, measured, gemm_gflops=None)
    assert p.seconds == pytest.approx(0.15 * 1.5) and "extrapolation" in p.basis
    first = lra.predict_step({"N": 1024, "macs": 10**9, "batch": 2}, [], gemm_gflops=100.0)
    assert first.seconds == pytest.approx(3 * 2 * 2e9 / 25e9) and first.memory_bytes is None


def _records(method: str, lengths, seconds, peaks, status=None):
    out = []
    for i, n in enumerate(lengths):
        st = (status or {}).get(n, "ok")
        out.append({
            "method": method, "N": n, "status": st,
            "step": {"median_ms": 1e3 * seconds[i]} if st == "ok" else None,
            "mem_step_bytes": peaks[i] if st == "ok" else None,
        })  # fmt: skip
    return out


LENGTHS = (1024, 2048, 4096, 8192, 16384)


def test_exponents_and_targets_on_synthetic_series():
    lin = [0.05 * n / 1024 for n in LENGTHS]
    quad = [0.05 * (n / 1024) ** 2 for n in LENGTHS]
    mem_lin = [2**20 * n / 1024 for n in LENGTHS]
    res = (
        _records("mirror", LENGTHS, lin, mem_lin)  # linear in time and memory: met
        + _records("linear_relu", LENGTHS, quad, mem_lin)  # a quadratic "linear" attention: not met
        + _records("softmax", LENGTHS, quad, mem_lin)  # quadratic time, linear memory (flash kernel)
    )
    scaling = lra.lra_scaling(res)
    assert scaling["mirror"]["time_exponent"] == pytest.approx(1.0)
    assert scaling["mirror"]["memory_exponent"] == pytest.approx(1.0)
    assert scaling["linear_relu"]["time_exponent"] == pytest.approx(2.0)
    assert scaling["softmax"]["time_ratio"] == pytest.approx(256) and scaling["softmax"]["token_ratio"] == 16
    targets = {t["target"]: t for t in lra.evaluate_lra_targets(scaling, ["mirror", "linear_relu"], backend="why")}
    assert targets["mirror: time exponent"]["met"] is True
    assert targets["mirror: peak-memory exponent"]["met"] is True
    assert targets["linear_relu: time exponent"]["met"] is False
    assert targets["linear_relu: time exponent"]["value"] == pytest.approx(2.0)
    assert targets["linear_relu: peak-memory exponent"]["met"] is True
    assert targets["softmax: time exponent (~quadratic)"]["met"] is True
    soft_mem = targets["softmax: peak-memory exponent (~quadratic)"]
    assert soft_mem["met"] is False and soft_mem["detail"].endswith("; why")
    assert "time ×16 for ×16 tokens" in targets["mirror: time exponent"]["detail"]

    # Sub-linear growth at short lengths (fixed costs) is met; 1.1 is the edge.
    assert lra.LINEAR_MAX_EXPONENT == 1.1
    edge = _records("mirror", LENGTHS, [0.05 * (n / 1024) ** 1.12 for n in LENGTHS], mem_lin)
    assert lra.evaluate_lra_targets(lra.lra_scaling(edge), ["mirror"])[0]["met"] is False

    # A series that stops before the longest length of the run is undecided, not met.
    cut = res + _records("flatten", LENGTHS, lin, mem_lin, status={16384: "skipped"})
    t = lra.evaluate_lra_targets(lra.lra_scaling(cut), ["flatten"])[0]
    assert t["met"] is None and "undecided" in t["detail"] and t["value"] == pytest.approx(1.0)
    missing = lra.evaluate_lra_targets(lra.lra_scaling(res), ["nala"], reference="nope")
    assert all(t["met"] is None for t in missing)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--lengths", "0"], "argument --lengths: expected comma-separated positive integers"),
        (["--lengths", "1024,-8"], "argument --lengths"),
        (["--lengths", "abc"], "argument --lengths"),
        (["--model", "seq_huge"], "--model: unknown sequence model 'seq_huge'; valid models: seq_tiny"),
        (["--attentions", "softmax", "nope"], "--attentions: no registered attention matches 'nope'"),
        (["--max-case-seconds", "0"], "argument --max-case-seconds"),
        (["--batch", "0"], "argument --batch"),
    ],
)
def test_bad_lra_input_is_one_line(tmp_path, capsys, extra, expected):
    assert expected in bench_usage_error("lra", extra, tmp_path, capsys)


def test_help_names_the_lra_kind(capsys):
    assert main(["bench", "lra", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--lengths" in text and "16384 = Pathfinder 128×128" in text and "--max-case-seconds" in text
