"""The staged sweep of ``mirrorla bench sr`` and ``bench lra``: sizes run smallest first, one stage per size.

A worker (:mod:`mirrorla.bench.worker`) measures memory only after all its timings, so a sweep in one
worker could not tell from the smaller sizes that a larger one will not fit in memory. The sizes therefore
run in stages, one worker call per size; before a stage, each attention's case is predicted from its own
smaller sizes and skipped, not run, when the prediction exceeds the budget. The unit of a case is one timed
run (an image's forward for ``sr``, a training step for ``lra``):

- seconds per unit: the larger of the log-log extrapolation through the last two measured sizes
  (:func:`~mirrorla.bench.worker._extrapolate`) and the last measured time scaled by the ratio of counted
  forward MACs. The MAC count includes softmax's N² matmuls, so the second follows softmax's quadratic growth
  where a slope fitted at small N (still dominated by the linear parts) would lag. With no smaller size
  measured: ``prior_forwards`` × the forward MACs (× the batch) at a quarter of the GEMM peak (the worker's
  rule for a case without history). The time budget (:class:`Limits`) holds for one unit, or for the
  ``steps`` units a case runs at least.
- peak memory per unit: the log-log extrapolation of the measured peaks; no prediction for the first size.

Once a size of an attention is skipped, fails, or runs over either budget, its larger sizes are skipped too.
Whatever is predicted is recorded with the case (``predicted_seconds``, ``predicted_memory_bytes``), so a
skipped case says what it would have cost. :class:`StagedKind` holds what differs between the kinds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from mirrorla.bench.ops import _try_count
from mirrorla.bench.report import seconds_text
from mirrorla.bench.worker import _extrapolate
from mirrorla.models.flops import unfused_attention

__all__ = [
    "Budget",
    "Limits",
    "Prediction",
    "StagedKind",
    "PRIOR_PEAK_SHARE",
    "count_macs",
    "error_line",
]

#: Share of the GEMM peak assumed for a case with no smaller size measured (the worker's rule).
PRIOR_PEAK_SHARE = 0.25
GIB = 2**30


@dataclass(frozen=True)
class Budget:
    """Base of a kind's budget (``SRBudget``, ``StepBudget``): every field of the subclass must be > 0."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(f"{field.name} must be > 0, got {value!r}")


class Limits(NamedTuple):
    """What a case may cost: ``seconds`` for one unit (``steps`` None) or for ``steps`` units, and the peak
    bytes of a unit."""

    seconds: float
    memory_bytes: int
    steps: int | None = None


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds and peak memory of one unit of a case (None: no basis), and how they were obtained."""

    seconds: float | None
    memory_bytes: float | None
    basis: str


def error_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def count_macs(
    cases: list[dict], create: Callable[[dict], torch.nn.Module], forward: Callable[[torch.nn.Module, dict], None]
) -> tuple[list[dict], dict[str, str]]:
    """The cases with ``macs`` (``forward(create(case), case)`` counted on fake tensors with softmax's explicit
    matrix; None where counting fails), and ``{attention: error}`` for the attentions whose model ``create``
    cannot build (ValueError, TypeError); such an attention is not built again."""
    errors: dict[str, str] = {}
    out = []
    for case in cases:
        macs = None
        if case["method"] not in errors:
            try:
                model = create(case)
            except (ValueError, TypeError) as err:
                errors[case["method"]] = error_line(err)
            else:

                def run(model=model, case=case):
                    with unfused_attention(model):
                        forward(model, case)

                macs = _try_count(run)
        out.append(dict(case, macs=macs))
    return out, errors


@dataclass(frozen=True)
class StagedKind:
    """What the staged sweep needs to know of a kind of case.

    ``unit``: one timed run of a case ("image", "step"). ``time_slot``, ``memory_slot``: where a record keeps
    the timing and the peak bytes of a unit; ``slots``: every timing and memory slot of a record (None in a
    case that did not run). ``stage``: the case key whose values are the stages ("size", "N"). ``label``: a
    case's size in words ("48×48", "L=1,024"); ``heading``: what the log says of a stage before its
    attentions. ``smaller``: the smaller sizes in words ("smaller size"); ``built``: what a build error did
    not build ("network"). ``prior_forwards``: forwards per unit for the first-size prior; ``seconds_option``:
    the command-line option of the time budget.
    """

    unit: str
    time_slot: str
    memory_slot: str
    slots: tuple[str, ...]
    stage: str
    label: Callable[[dict], str]
    heading: Callable[[dict], str]
    smaller: str
    built: str
    prior_forwards: int
    seconds_option: str

    def predict(self, case: dict, measured: list[dict], gemm_gflops: float | None) -> Prediction:
        """Seconds and peak memory of one unit of ``case`` from ``measured``: the ok records of the same
        attention at smaller sizes, ascending (see the module docstring for the rules)."""
        n = case["N"]
        times = [(r["N"], r[self.time_slot]["median_ms"] / 1e3) for r in measured]
        peaks = [(r["N"], r[self.memory_slot]) for r in measured if r.get(self.memory_slot)]
        seconds, basis = None, f"no {self.smaller} measured and no MAC count"
        if times:
            seconds = _extrapolate(times, n, 2.0)
            last = measured[-1]
            basis = f"log-log extrapolation from {self.label(last)}"
            if case.get("macs") and last.get("macs"):
                scaled = times[-1][1] * case["macs"] / last["macs"]
                if seconds is None or scaled > seconds:
                    seconds, basis = scaled, f"{self.label(last)} time × MAC ratio"
        elif case.get("macs") and gemm_gflops:
            forwards = self.prior_forwards * 2 * case["macs"] * case.get("batch", 1)
            seconds = forwards / (PRIOR_PEAK_SHARE * gemm_gflops * 1e9)
            macs = "MACs" if self.prior_forwards == 1 else f"{self.prior_forwards}× forward MACs"
            basis = f"{macs} at {PRIOR_PEAK_SHARE:.0%} of the GEMM peak"
        memory = _extrapolate(peaks, n, 2.0) if peaks else None
        return Prediction(seconds, memory, basis)

    def _prediction_text(self, p: Prediction) -> str:
        parts = []
        if p.seconds is not None:
            parts.append(f"{seconds_text(p.seconds)} per {self.unit}")
        if p.memory_bytes is not None:
            parts.append(f"{p.memory_bytes / GIB:.2f} GiB")
        return f"predicted {', '.join(parts)} ({p.basis})" if parts else ""

    def _over(self, seconds: float | None, memory: float | None, limits: Limits) -> str | None:
        """Why ``seconds`` per unit or ``memory`` bytes per unit break ``limits``; None if they do not."""
        why = []
        if seconds is not None:
            cost, what = seconds, f"per {self.unit}"
            if limits.steps is not None:
                cost, what = seconds * limits.steps, f"for {limits.steps} {self.unit}s"
            if cost > limits.seconds:
                why.append(f"{seconds_text(cost)} {what} > {self.seconds_option} {limits.seconds:g}")
        if memory is not None and memory > limits.memory_bytes:
            why.append(f"{memory / GIB:.2f} GiB > --max-memory-gb {limits.memory_bytes / GIB:.3g}")
        return " and ".join(why) or None

    def _not_run(self, case: dict, status: str, note: str, p: Prediction | None = None) -> dict:
        return dict(
            case,
            status=status,
            note=note,
            **dict.fromkeys(self.slots),
            predicted_seconds=p.seconds if p else None,
            predicted_memory_bytes=p.memory_bytes if p else None,
            within_budget=None,
        )

    def sweep(
        self,
        cases: list[dict],
        run_stage: Callable[[list[dict]], list[dict]],
        limits: Limits,
        *,
        gemm_gflops: float | None = None,
        build_errors: dict[str, str] | None = None,
        log: Callable[[str], None] = print,
    ) -> list[dict]:
        """Run ``cases`` stage by stage and return one record per case, in the order of ``cases``.

        ``run_stage(to_run)``: the worker records of the cases of a stage that are to run, in order.
        A record is the worker's plus ``predicted_seconds``,
        ``predicted_memory_bytes`` (per unit) and ``within_budget`` (True/False for a case that ran, None for
        one that did not); skipped and failed cases say why in ``note``. ``build_errors``: ``{attention:
        error}`` of :func:`count_macs`, whose cases are errors, not run.
        """
        build_errors = build_errors or {}
        measured: dict[str, list[dict]] = defaultdict(list)
        stopped: dict[str, str] = {}
        results: list[dict] = []
        for key in dict.fromkeys(c[self.stage] for c in cases):
            stage = [c for c in cases if c[self.stage] == key]
            label = self.label(stage[0])
            to_run, predictions = [], {}
            for case in stage:
                name = case["method"]
                if name in build_errors:
                    results.append(self._not_run(case, "error", f"{self.built} not built: {build_errors[name]}"))
                    continue
                p = self.predict(case, measured[name], gemm_gflops)
                if name in stopped:
                    note = "; ".join(x for x in (f"skipped: {stopped[name]}", self._prediction_text(p)) if x)
                    results.append(self._not_run(case, "skipped", note, p))
                    continue
                over = self._over(p.seconds, p.memory_bytes, limits)
                if over:
                    over = f"predicted {over} ({p.basis})"
                    results.append(self._not_run(case, "skipped", f"skipped: {over}", p))
                    stopped[name] = f"{label} was skipped"
                    log(f"  {label} {name}: skipped, {over}")
                    continue
                predictions[name] = p
                to_run.append(case)
            if not to_run:
                continue
            log(f"{self.heading(stage[0])}: {', '.join(c['method'] for c in to_run)}")
            done = run_stage(to_run)
            for case, rec in zip(to_run, done, strict=True):
                name, p = case["method"], predictions[case["method"]]
                rec.update(macs=case.get("macs"), predicted_seconds=p.seconds, predicted_memory_bytes=p.memory_bytes)
                if rec["status"] != "ok":
                    rec["within_budget"] = None
                    stopped[name] = f"{label} failed ({rec['note']})"
                    log(f"  {label} {name}: {rec['status']}, {rec['note']}")
                    continue
                measured[name].append(rec)
                timing, peak = rec[self.time_slot], rec.get(self.memory_slot)
                over = self._over(timing["median_ms"] / 1e3, peak, limits)
                rec["within_budget"] = over is None
                if over:
                    rec["note"] = "; ".join(x for x in (rec.get("note"), f"over budget: {over}") if x)
                    stopped[name] = f"{label} ran over budget ({over})"
                log(
                    f"  {label} {name}: {seconds_text(timing['median_ms'] / 1e3)} per {self.unit} "
                    f"(median of {timing['repeats']}), peak "
                    + (f"{peak / 2**20:,.1f} MiB" if peak is not None else "not measured")
                    + (f", OVER BUDGET: {over}" if over else "")
                )
            results.extend(done)
        order = {(c["method"], c[self.stage]): i for i, c in enumerate(cases)}
        return sorted(results, key=lambda r: order[(r["method"], r[self.stage])])
