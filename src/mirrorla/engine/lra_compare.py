"""``mirrorla lra compare``: the same sequence model, budget and seeds for every attention, on one or more
long-range tasks; the LRA table (attention × task, average) at the end.

Per task, the job is a comparison in ``<out>/<task>/`` with the run folders, checks, worker processes and
``--resume`` of ``mirrorla compare``: for each (attention, seed) it trains the model with
:func:`mirrorla.engine.train` (task ``long_range``), predicts every evaluation example, and writes the run's
``result.json`` (final accuracy, the learning curve, accuracy per length bucket). After training, with a fresh
seed-0 model per attention: seconds and peak memory of one training step at the task's batch and length (the
attentions take turns over rounds, median). Outputs:

- ``<task>/results.md``, ``results.json``, ``accuracy.png`` (accuracy ± std with the majority-class floor),
  ``curves.png`` (evaluation accuracy per epoch), ``cost.png`` (step time and peak memory per attention) and,
  where lengths vary (ListOps, text), ``accuracy_by_length.png``;
- ``summary.md``/``summary.json``: attention × task accuracy and the average, as LRA tables are laid out, and
  ``accuracy_vs_length.png`` (ListOps length buckets; the Pathfinder sizes compared in the job).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mirrorla.engine import compare as _cmp
from mirrorla.engine.checkpoint import atomic_write_bytes, write_result_json
from mirrorla.engine.config import CompareConfig, TrainConfig, quick_note
from mirrorla.engine.lra import accuracy_by_length, majority_baseline, predict, train_step_cost
from mirrorla.engine.model import count_params
from mirrorla.engine.trainer import describe_provenance, environment_summary, train

__all__ = ["run_lra_compare", "run_lra_suite", "format_lra_table", "format_summary_table"]


def _run_one(cfg: TrainConfig, datasets) -> dict[str, Any]:
    """Train one run, predict every evaluation example, write its ``result.json``."""
    t0 = time.perf_counter()
    out = train(cfg, datasets, label=_cmp.run_label(cfg))
    history, model = out["history"], out["model"].eval()
    eval_set = datasets[1]
    preds, labels = predict(model, eval_set, batch_size=cfg.batch_size)
    lengths = eval_set.lengths
    varies = bool(lengths.min() != lengths.max())
    top1 = 100.0 * float((preds == labels).float().mean())
    result = {
        "result_key": cfg.result_key(),
        "epochs": cfg.epochs,
        "final_top1": top1,
        "best_top1": max(h["eval_top1"] for h in history),
        "curve_top1": [h["eval_top1"] for h in history],
        "curve_train_loss": [h.get("train_loss") for h in history],
        "curve_train_top1": [h.get("train_top1") for h in history],
        "curve_steps": [h["step"] for h in history],
        "by_length": accuracy_by_length(preds, labels, lengths) if varies else [],
        "train_img_s": _cmp.median_known(h.get("train_img_s") for h in history),
        "train_time_s": sum(h.get("train_time_s", 0.0) for h in history),
        "wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "data_files": list(datasets[2].files),
        "provenance": out["provenance"],
        "summary": f"top-1 {top1:.2f}% (best epoch {max(h['eval_top1'] for h in history):.2f}%)",
    }
    write_result_json(Path(cfg.out_dir) / "result.json", result)
    return result


def run_lra_compare(cc: CompareConfig, cost_rounds: int = 3, datasets=None) -> dict[str, Any]:
    """Run the comparison of ``cc`` on its task (``cc.base.dataset``); returns what results.json holds."""
    from mirrorla.tasks import create_task

    base = cc.base
    if base.task != "long_range":
        raise ValueError(f"run_lra_compare needs a long_range base configuration, got task {base.task!r}")
    out = _cmp.start_job(cc)
    t_start = time.perf_counter()
    task = create_task(base.task, base)
    datasets = datasets or task.build_datasets(base)
    info = datasets[2]
    methods = _cmp.train_runs(cc, out, datasets, _run_one, f"lra compare {base.dataset}")
    results: dict[str, Any] = {
        "task": base.dataset,
        "attentions": list(cc.attentions),
        "seeds": list(cc.seeds),
        "preset": cc.preset,
        "config": base.to_dict(),
        "dataset": _info_record(info),
        "majority_top1": majority_baseline(info.label_counts),
        "environment": environment_summary(),
        "methods": methods,
    }
    for m in methods.values():
        _summarise(m)
    _cost(base, task, datasets, results, cost_rounds)
    results["wall_s"] = time.perf_counter() - t_start
    _write(out, results)
    return results


def _info_record(info) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.__dict__.items()}


def _summarise(method: dict[str, Any]) -> None:
    runs = list(method["runs"].values())
    method["top1_mean"], method["top1_std"] = _cmp._mean_std([r["final_top1"] for r in runs])
    method["train_img_s"] = _cmp.median_known(r["train_img_s"] for r in runs)
    method["train_time_s"] = statistics.fmean(r["train_time_s"] for r in runs)


def _cost(base: TrainConfig, task, datasets, results: dict[str, Any], rounds: int) -> None:
    """Params, seconds and peak memory of one training step per attention (fresh seed-0 models, one batch of
    the evaluation split at the task's batch size and full length; the attentions take turns)."""
    from mirrorla.bench.memory import exact_cpu_accounting

    eval_set, info = datasets[1], datasets[2]
    n = min(base.batch_size, len(eval_set))
    x, y = eval_set.get_batch(torch.arange(n))
    models = {}
    for name in results["methods"]:
        cfg = base.replace(attention=name)
        torch.manual_seed(0)
        models[name] = task.build_model(cfg, info)
        results["methods"][name]["params"] = count_params(models[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        train_step_cost(model, x, y, rounds=1, memory=False)
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(train_step_cost(model, x, y, rounds=1, memory=False)["step_s"])
    exact = exact_cpu_accounting()  # after all timings: it makes allocation slower
    for name, model in models.items():
        m = results["methods"][name]
        m["step_s"] = statistics.median(times[name])
        m["step_s_rounds"] = times[name]
        m["peak_memory_bytes"] = train_step_cost(model, x, y, rounds=1, memory=True)["peak_memory_bytes"]
    results["cost_protocol"] = (
        f"a fresh seed-0 model per attention; one training step (forward, cross-entropy, backward, AdamW) on {n} "
        f"evaluation sequences of {x.shape[-1]} tokens; 1 warm-up, then {rounds} rounds with the attentions taking "
        f"turns, median; {torch.get_num_threads()} threads. Peak memory: the process's resident-set high-water mark "
        f"during one step{'' if exact else ' (approximate: allocator not switched to exact accounting)'}"
    )


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_lra_table(results: dict[str, Any]) -> str:
    """The Markdown table of one task: accuracy, best epoch, learning curve, params, step cost."""
    n = len(results["seeds"])
    lines = [
        f"| attention | top-1 % (mean ± std, {n} seed{'s' * (n > 1)}) | best epoch % | eval top-1 per epoch | "
        "params | train s/step | peak MB/step | train time s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
        f"| majority class | {results['majority_top1']:.2f} | | | | | | |",
    ]
    for name, m in results["methods"].items():
        runs = list(m["runs"].values())
        best = statistics.fmean(r["best_top1"] for r in runs)
        curve = [statistics.fmean(r["curve_top1"][i] for r in runs) for i in range(len(runs[0]["curve_top1"]))]
        mem = m.get("peak_memory_bytes")
        lines.append(
            f"| {name} | {_fmt(m['top1_mean'], m['top1_std'])} | {best:.2f} | {' → '.join(f'{c:.1f}' for c in curve)} "
            f"| {_cmp._human(m['params'])} | {m['step_s']:.2f} | {'–' if mem is None else format(mem / 2**20, '.0f')} "
            f"| {m['train_time_s']:.0f} |"
        )
    return "\n".join(lines)


def _write(out: Path, results: dict[str, Any]) -> None:
    cfg, info, env = results["config"], results["dataset"], results["environment"]
    layout = "pixel grid (2-D variant)" if cfg["layout"] == "2d" else "one 1-D sequence, grid (1, L)"
    header = (
        f"Long-range task {results['task']} ({info['source']}"
        f"{', difficulty ' + info['difficulty'] if info.get('difficulty') and 'pathfinder' in results['task'] else ''}"
        f"): {info['train_size']} training / {info['eval_size']} evaluation sequences of up to {info['max_len']} "
        "tokens, "
        f"{info['num_classes']} classes, layout: {layout}. Model {cfg['model']}; {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, AdamW lr {cfg['lr']} (weight decay {cfg['weight_decay']}), seeds {results['seeds']}. "
        f"Top-1 = accuracy on the evaluation split after the last epoch. Machine: {env['cpu_count']} CPUs, torch "
        f"{env['torch']}, {describe_provenance(env)}. Step cost: {results['cost_protocol']}."
    )
    from mirrorla.engine.lra_figures import plot_task

    with _cmp.results_lock(out):  # one writer of the folder's results files at a time
        _cmp.write_results(
            out, header, format_lra_table(results), results, quick_note("lra compare", results["preset"])
        )
        plot_task(out, results)


def run_lra_suite(cc: CompareConfig, tasks: list[dict[str, Any]], cost_rounds: int = 3) -> dict[str, Any]:
    """One :func:`run_lra_compare` per task, each with ``cc.base`` updated by the task's fields (``dataset`` and
    its budget: ``train_subset``, ``epochs``, ...), in ``<cc.out_dir>/<label>``; then the summary files.
    ``tasks``: dicts with ``label`` (the sub-folder) and TrainConfig fields."""
    out = Path(cc.out_dir)
    per_task: dict[str, Any] = {}
    for spec in tasks:
        fields = {k: v for k, v in spec.items() if k != "label"}
        sub = dataclasses.replace(cc, base=cc.base.replace(**fields), out_dir=str(out / spec["label"]))
        _cmp._say(f"[lra compare] task {spec['label']}: {fields}")
        per_task[spec["label"]] = run_lra_compare(sub, cost_rounds=cost_rounds)
    summary = {"tasks": list(per_task), "attentions": list(cc.attentions), "seeds": list(cc.seeds), "per_task": {}}
    for label, r in per_task.items():
        summary["per_task"][label] = {
            "majority_top1": r["majority_top1"],
            "max_len": r["dataset"]["max_len"],
            "methods": {
                n: {k: m[k] for k in ("top1_mean", "top1_std", "step_s", "peak_memory_bytes")}
                | {"by_length": [row for run in m["runs"].values() for row in run["by_length"]]}
                for n, m in r["methods"].items()
            },
        }
    if len(per_task) > 1:
        out.mkdir(parents=True, exist_ok=True)
        table = format_summary_table(summary)
        from mirrorla.engine.lra_figures import plot_accuracy_vs_length

        with _cmp.results_lock(out):
            atomic_write_bytes(out / "summary.md", (table + "\n").encode())
            write_result_json(out / "summary.json", summary)
            plot_accuracy_vs_length(out / "accuracy_vs_length.png", summary)
        note = quick_note("lra compare", cc.preset)
        print("\n" + table + "\n" + (f"\n{note}\n" if note else ""), flush=True)
    return summary


def format_summary_table(summary: dict[str, Any]) -> str:
    """Attention × task top-1 (mean ± std) and the average over tasks, LRA's layout; the majority row first."""
    tasks = summary["tasks"]
    lines = ["| attention | " + " | ".join(tasks) + " | average |", "|---" + "|---:" * (len(tasks) + 1) + "|"]
    floor = [summary["per_task"][t]["majority_top1"] for t in tasks]
    lines.append("| majority class | " + " | ".join(f"{v:.2f}" for v in floor) + f" | {statistics.fmean(floor):.2f} |")
    for name in summary["attentions"]:
        cells = [summary["per_task"][t]["methods"][name] for t in tasks]
        avg = statistics.fmean(c["top1_mean"] for c in cells)
        lines.append(
            f"| {name} | " + " | ".join(_fmt(c["top1_mean"], c["top1_std"]) for c in cells) + f" | {avg:.2f} |"
        )
    return "\n".join(lines)
