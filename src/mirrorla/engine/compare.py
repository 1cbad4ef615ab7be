"""``mirrorla compare``: the same small ViT, budget and seeds for every attention; one table.

For each attention the job builds the project's small ViT (timm ``VisionTransformer`` with the
attention from the registry, :func:`mirrorla.engine.model.create_classifier`), counts parameters and
MACs, trains it once per seed with :func:`mirrorla.engine.train` and evaluates it. Inference
throughput is measured at the end, for all attentions together in interleaved rounds. It writes to the output directory:

- ``results.md``   the Markdown table (also printed): top-1 mean ± std over seeds, params, MACs,
                   training and evaluation images/s,
- ``results.json`` every number: per-seed histories, the configuration and the environment,
- ``accuracy_curves.png`` and ``accuracy_vs_throughput.png``,
- ``runs/<attention>/seed<k>/`` each run's metrics and ``result.json``; with ``--resume`` finished
  runs with the same settings (and data files) are reused if their ``result.json`` matches the SHA-256
  it records and the run's metrics (else it is rebuilt from the run, see :func:`_read_result`), and an
  unfinished run whose folder holds an epoch checkpoint with the same settings continues from it (the
  trainer resumes exactly), so an interrupted comparison continues where it stopped.

Several compare processes may share one output directory (``--resume``, e.g. disjoint
``--attentions``): each run folder has one writer (:mod:`mirrorla.engine.run_folder`), and the
results files are written under the lock ``results.lock``, merged with every attention whose runs
for all seeds are finished in the folder with the same settings, so the last writer's table lists
them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mirrorla.engine.checkpoint import (
    TEMP_NAME,
    OutputWriteError,
    ResultFileError,
    atomic_write_bytes,
    read_result_json,
    remove_temp_files,
    save_figure,
    write_result_json,
)
from mirrorla.engine.config import (
    BASE,
    DEFAULT_ATTENTIONS,
    PRESETS,
    RESULT_FIELDS,
    CompareConfig,
    TrainConfig,
    check_subset_sizes,
    quick_note,
    saved_field,
)
from mirrorla.engine.model import (
    check_attentions,
    count_macs,
    count_params,
    create_classifier,
    measure_throughput_rounds,
)
from mirrorla.engine.run_folder import FolderLock
from mirrorla.engine.trainer import (
    TrainingDivergedError,
    check_resume_config,
    check_resume_data,
    describe_provenance,
    environment_summary,
    parse_metrics,
    train,
)
from mirrorla.registry import list_attentions

__all__ = [
    "BASE",
    "CompareConfig",
    "DEFAULT_ATTENTIONS",
    "PRESETS",
    "run_compare",
    "format_table",
    "finished_runs",
    "results_lock",
]

RESULTS_LOCK = "results.lock"
#: How long a compare process waits for another one to finish writing the shared results files.
RESULTS_LOCK_WAIT_S = 300.0


def _require(module: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{purpose} need the package {module}: pip install 'mirrorla[train]'", name=module)


def median_known(values) -> float | None:
    """The median of the values that are not None (None if there are none): the training rate of an epoch
    whose record was recomputed from its checkpoint is unknown (see :func:`mirrorla.engine.trainer.train`)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def run_compare(cc: CompareConfig, datasets=None) -> dict[str, Any]:
    """Run the comparison; returns the dict written to ``results.json``."""
    from mirrorla.tasks import create_task

    check_attentions(list(cc.attentions))
    _require("matplotlib", "the figures")  # fail now, not after hours of training
    base = cc.base
    if base.threads:
        torch.set_num_threads(base.threads)
    out = Path(cc.out_dir)
    _check_out_folder(out, cc)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if datasets is None:  # the task raises for a subset larger than its split
        datasets = create_task(base.task, base).build_datasets(base)
    else:  # data built by the caller: the subsets the runs record must fit it
        check_subset_sizes(base, datasets[2].train_size, datasets[2].eval_size)
    info = datasets[2]
    _check_run_folders(cc, out, info.files)
    jobs = _resolve_jobs(cc)
    reusable = cc.resume or jobs > 1  # jobs > 1: the workers below train every run, this loop reads their results
    runs = [_run_config(cc, out, name, seed) for name in cc.attentions for seed in cc.seeds]
    reused = [cfg for cfg in runs if cc.resume and _saved_result(cfg, info.files) is not None]
    if reused:
        _say(f"[compare] reusing {len(reused)} of {len(runs)} runs finished in {out / 'runs'} with these settings")
    bar = _job_progress(len(runs), len(reused), cc.progress)
    try:
        if jobs > 1:  # train every run in worker processes first; the loop below then reuses their results
            _train_in_parallel(cc, base, datasets, out, jobs, bar)
        results: dict[str, Any] = {
            "preset": cc.preset,
            "attentions": list(cc.attentions),
            "seeds": list(cc.seeds),
            "config": base.to_dict(),
            "dataset": info.__dict__,
            "environment": environment_summary(),
            "throughput_protocol": (
                f"eval mode, batch {cc.throughput_batch}, {cc.throughput_warmup} warm-up forwards, then "
                f"{cc.throughput_rounds} rounds of {cc.throughput_iters} timed forwards with the attentions "
                f"taking turns, median over rounds, {torch.get_num_threads()} threads"
            ),
            "methods": {},
        }
        probes: dict[str, torch.nn.Module] = {}  # seed-0 initialisations, timed after training
        for name in cc.attentions:
            probes[name], method = _probe(base.replace(attention=name), info)
            method["eval_img_s"] = None  # measured below, all attentions together
            for seed in cc.seeds:
                cfg = _run_config(cc, out, name, seed)
                saved = _saved_result(cfg, info.files) if reusable else None
                if saved is None:
                    saved = _run_one(continued(cfg, info) if cc.resume else cfg, datasets)
                    _report(cfg, saved, bar)
                method["runs"][str(seed)] = saved
            _summarise(method)
            results["methods"][name] = method
            _write_outputs(out, results, cc, info)  # partial results survive an interruption
    finally:
        if bar is not None:
            bar.close()
    # Inference throughput last, the attentions taking turns, so that load changes on a shared machine
    # (and the training just finished) do not favour whichever attention was timed in a quiet moment.
    rounds = measure_throughput_rounds(
        probes, info.in_chans, info.image_size, cc.throughput_batch, cc.throughput_warmup, cc.throughput_iters,
        cc.throughput_rounds,
    )  # fmt: skip
    for name, values in rounds.items():
        results["methods"][name]["eval_img_s"] = statistics.median(values)
        results["methods"][name]["eval_img_s_rounds"] = values
    results["wall_s"] = time.perf_counter() - t_start
    return _write_outputs(out, results, cc, info, figures=True)


def _run_config(cc: CompareConfig, out: Path, name: str, seed: int) -> TrainConfig:
    # overwrite: the run folder belongs to the comparison, which has already decided to (re)train it
    # (see _check_out_folder and _check_run_folders).
    return cc.base.replace(attention=name, seed=seed, out_dir=str(out / "runs" / name / f"seed{seed}"), overwrite=True)


def continued(cfg: TrainConfig, info) -> TrainConfig:
    """``cfg`` of a comparison run that ``--resume`` trains: set to continue from the run folder's last epoch
    checkpoint where that checkpoint has this run's settings and read data files with the contents of
    ``info.files``; otherwise unchanged (trained from the start, replacing the folder's unfinished run)."""
    folder = Path(cfg.out_dir)
    pointer = folder / "checkpoints" / "last.json"
    if not pointer.is_file():
        return cfg
    try:
        epoch = int(json.loads(pointer.read_text())["epoch"])
        saved = json.loads((folder / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("config.json is not a JSON object")
        check_resume_config(cfg, saved)
        check_resume_data(folder / "config.json", info)
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err).splitlines()[0].rstrip(":;")
        _say(f"{run_label(cfg)} its unfinished run cannot be continued ({reason}): training it from the start")
        return cfg
    _say(f"{run_label(cfg)} continuing the unfinished run from its epoch-{epoch + 1} checkpoint")
    return cfg.replace(resume=str(folder), overwrite=False)


def _probe(cfg: TrainConfig, info) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The seed-0 model of ``cfg`` and the start of its table row: params and MACs."""
    torch.manual_seed(0)
    probe = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size)
    macs, counter = count_macs(probe, info.in_chans, info.image_size)
    return probe, {"params": count_params(probe), "macs": macs, "mac_counter": counter, "runs": {}}


def _summarise(method: dict[str, Any]) -> None:
    runs = list(method["runs"].values())
    method["top1_mean"], method["top1_std"] = _mean_std([r["final_top1"] for r in runs])
    method["train_img_s"] = median_known(r["train_img_s"] for r in runs)


def _check_out_folder(out: Path, cc: CompareConfig) -> None:
    """A new comparison does not silently replace what an output folder holds."""
    if cc.resume or cc.overwrite or not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir() if p.name != RESULTS_LOCK and not TEMP_NAME.fullmatch(p.name))
    if present:
        shown = ", ".join(present[:6]) + (", …" if len(present) > 6 else "")
        raise ValueError(
            f"--out {out} already holds files ({shown}): a new comparison would replace them. Pass --resume to "
            "reuse its finished runs with identical settings and train the others, --overwrite to retrain every "
            "run, or choose another --out"
        )


def _check_run_folders(cc: CompareConfig, out: Path, data_files) -> None:
    """Before any training: stop if a run this job would train is finished with other settings (and
    ``overwrite`` is off) or is being written by another process."""
    for name in cc.attentions:
        for seed in cc.seeds:
            cfg = _run_config(cc, out, name, seed)
            folder = Path(cfg.out_dir)
            FolderLock(folder).check_free()
            saved = _read_result(folder)
            if saved is None or cc.overwrite:
                continue
            differences = _result_differences(saved, cfg, data_files)
            if cc.resume and not differences:
                continue  # reused
            raise ValueError(
                f"{folder} holds a finished run with other settings than this job's ({'; '.join(differences)}): "
                "pass --overwrite to retrain it, or choose another --out"
            )


def start_job(cc: CompareConfig) -> Path:
    """The checks and set-up every comparison makes before its data and training: known attentions,
    matplotlib for the figures (fail now, not after hours of training), the threads, the output folder."""
    check_attentions(list(cc.attentions))
    _require("matplotlib", "the figures")
    if cc.base.threads:
        torch.set_num_threads(cc.base.threads)
    out = Path(cc.out_dir)
    _check_out_folder(out, cc)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Hold the lock under which a comparison writes its results files and figures into ``out`` (waiting up
    to :data:`RESULTS_LOCK_WAIT_S` for another compare process); temporary files a killed writer left in
    ``out`` are removed once it is held."""
    with FolderLock(out, RESULTS_LOCK, purpose="writing the comparison's results").acquire(RESULTS_LOCK_WAIT_S):
        remove_temp_files(out)
        yield


def write_results(out: Path, header: str, table: str, results: dict[str, Any], note: str = "") -> None:
    """``results.md`` (the header paragraph, the table and ``note``, e.g. a quick preset's
    :data:`~mirrorla.engine.config.QUICK_NOTES` line) and ``results.json`` of a task comparison, written
    atomically; the table and the note are printed too."""
    below = f"\n{note}\n" if note else ""
    atomic_write_bytes(out / "results.md", (header + "\n\n" + table + "\n" + below).encode())
    write_result_json(out / "results.json", results)
    print("\n" + table + "\n" + below, flush=True)


def train_runs(cc: CompareConfig, out: Path, datasets, run_one, job: str) -> dict[str, dict[str, Any]]:
    """Train every (attention, seed) run of ``cc`` in ``out/runs`` — in ``cc.jobs`` worker processes, reusing
    finished runs with ``cc.resume`` — and return ``{attention: {"runs": {seed: result}}}``.

    ``run_one(cfg, datasets)`` trains one run and writes its ``result.json`` (a module-level function, so the
    spawned workers can import it); ``job`` names the command in the lines printed (``"sr compare"``, ...).
    Used by the task comparisons (``sr compare``, ``lra compare``); ``compare`` interleaves its own probes.
    """
    info = datasets[2]
    _check_run_folders(cc, out, info.files)
    jobs = _resolve_jobs(cc)
    runs = [_run_config(cc, out, name, seed) for name in cc.attentions for seed in cc.seeds]
    reused = [cfg for cfg in runs if cc.resume and _saved_result(cfg, info.files) is not None]
    if reused:
        _say(f"[{job}] reusing {len(reused)} of {len(runs)} runs finished in {out / 'runs'}")
    bar = _job_progress(len(runs), len(reused), cc.progress)
    methods: dict[str, Any] = {}
    try:
        if jobs > 1:  # every run in worker processes first; the loop below then reads their results
            _train_in_parallel(cc, cc.base, datasets, out, jobs, bar, run_one=run_one)
        for cfg in runs:
            saved = _saved_result(cfg, info.files) if (cc.resume or jobs > 1) else None
            if saved is None:
                saved = run_one(continued(cfg, info) if cc.resume else cfg, datasets)
                _report(cfg, saved, bar)
            methods.setdefault(cfg.attention, {"runs": {}})["runs"][str(cfg.seed)] = saved
    finally:
        if bar is not None:
            bar.close()
    return methods


def run_label(cfg: TrainConfig) -> str:
    """How the lines of one run of a comparison start: its attention and seed."""
    return f"[{cfg.attention} seed {cfg.seed}]"


def _say(line: str) -> None:
    """Print a line above the job's progress bar (if any) without breaking it."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _job_progress(total: int, done: int, enabled: bool):
    """One bar over all runs of the job, with the ETA of the whole job (on stderr)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="compare", unit="run", file=sys.stderr, dynamic_ncols=True)


def _report(cfg: TrainConfig, r: dict[str, Any], bar) -> None:
    summary = r.get("summary") or f"top-1 {r['final_top1']:.2f}%"
    _say(f"{run_label(cfg)} finished: {summary}  ({r['wall_s']:.0f} s)")
    if bar is not None:
        bar.update(1)


def finished_runs(cc: CompareConfig) -> tuple[int, int]:
    """(runs of ``cc`` finished in its folder with its settings, all its runs): what an interrupted job keeps."""
    out = Path(cc.out_dir)
    cfgs = [_run_config(cc, out, name, seed) for name in cc.attentions for seed in cc.seeds]
    done = 0
    for cfg in cfgs:
        done += _saved_result(cfg) is not None
    return done, len(cfgs)


def _resolve_jobs(cc: CompareConfig) -> int:
    if cc.jobs is not None:
        return cc.jobs
    device = cc.base.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, (os.cpu_count() or 1) // (cc.base.threads or 1))


def _train_in_parallel(
    cc: CompareConfig, base: TrainConfig, datasets, out: Path, jobs: int, bar=None, run_one=None
) -> None:
    """Train every (attention, seed) run not already finished in ``jobs`` worker processes.

    ``run_one(cfg, datasets)`` trains one run and writes its ``result.json`` (default: :func:`_run_one`;
    a module-level function, so the spawned workers can import it).

    Each worker gets ``base.threads`` threads, or cores // jobs: for a model this small, separate
    1-thread processes use a CPU better than one process with many threads.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = base.threads or max(1, (os.cpu_count() or 1) // jobs)
    tasks = []
    for name in cc.attentions:
        for seed in cc.seeds:
            cfg = _run_config(cc, out, name, seed).replace(threads=threads)
            if not cc.resume:
                tasks.append(cfg)
            elif _saved_result(cfg, datasets[2].files) is None:
                tasks.append(continued(cfg, datasets[2]))
    if not tasks:
        return
    job = {"super_resolution": "sr compare", "long_range": "lra compare"}.get(base.task, "compare")
    _say(f"[{job}] training {len(tasks)} runs in {jobs} processes with {threads} thread(s) each")
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch's thread pools
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(datasets,)) as pool:
        futures = {pool.submit(_worker_run, cfg, run_one or _run_one): cfg for cfg in tasks}
        try:
            for future in as_completed(futures):
                cfg = futures[future]
                try:
                    r = future.result()
                except Exception as exc:
                    # Leaving the pool waits for the runs already going; their results stay for --resume.
                    raise worker_error(cfg, exc) from exc
                _report(cfg, r, bar)
        except BaseException:  # an error, or Ctrl-C: start no further run
            for f in futures:
                f.cancel()
            raise


def worker_error(cfg: TrainConfig, exc: BaseException) -> Exception:
    """The error to raise in the parent for a run that failed in a worker process: the same kind as the
    worker's where the CLI reports that kind in one line (bad settings, a diverging run, a full disk or a
    read-only folder), with the run named; a ``RuntimeError`` otherwise."""
    msg = f"run {cfg.attention} seed {cfg.seed} failed in a worker process: {exc}"
    if isinstance(exc, OutputWriteError):
        return OutputWriteError(exc.errno, exc.strerror, exc.filename, msg)
    same_kind = isinstance(exc, (ValueError, TrainingDivergedError))
    return (type(exc) if same_kind else RuntimeError)(msg)


_WORKER_DATASETS = None


def _worker_init(datasets) -> None:
    global _WORKER_DATASETS
    _WORKER_DATASETS = datasets


def _worker_run(cfg: TrainConfig, run_one=None) -> dict[str, Any]:
    return (run_one or _run_one)(cfg, _WORKER_DATASETS)


#: (curve in a run's result.json, the metrics.jsonl field each of its points is) of the comparisons' runs.
_CURVES = (("curve_top1", "eval_top1"), ("curve_crop_psnr", "eval_psnr"))
_warned_results: set[Path] = set()


def _read_result(folder: Path) -> dict[str, Any] | None:
    """The run's ``result.json`` if it can be trusted, else None (the run counts as unfinished).

    Trusted: it matches the SHA-256 it records, and its learning curve is the run's ``metrics.jsonl``
    (files without a checksum, from older versions, are checked on the curve alone). A file that fails is
    not used, with a warning: ``--resume`` rebuilds it from the run's last checkpoint (no training when
    that is the final epoch's) or, without a checkpoint, trains the run again.
    """
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        saved = read_result_json(path)
        _check_against_metrics(saved, folder / "metrics.jsonl")
    except ResultFileError as err:
        if path not in _warned_results:
            _warned_results.add(path)
            _say(f"not using {path}: {err}; it is rebuilt from its run (from the checkpoint, if any)")
        return None
    return saved


def _check_against_metrics(saved: dict[str, Any], metrics: Path) -> None:
    """``ResultFileError`` unless the curves of ``saved`` are the per-epoch records of ``metrics``."""
    try:
        records, problems, _ = parse_metrics(metrics)
    except OSError as err:
        raise ResultFileError(f"cannot read {metrics} to check it against ({err})") from err
    for curve, field in _CURVES:
        if curve in saved and (problems or saved[curve] != [r.get(field) for r in records]):
            raise ResultFileError(
                f"its {curve} is not the {field} of the epochs in {metrics}"
                + (f" ({'; '.join(problems)})" if problems else "")
            )


def _result_differences(saved: dict[str, Any], cfg: TrainConfig, data_files) -> list[str]:
    """How a finished run's ``result.json`` differs from ``cfg`` and the data files read now.

    Runs written before data files were recorded are compared on their settings only.
    """
    key, saved_key = json.loads(json.dumps(cfg.result_key())), saved.get("result_key") or {}
    differences = [
        f"{k} {saved_field(saved_key, k)!r} there, {v!r} now" for k, v in key.items() if saved_field(saved_key, k) != v
    ]
    if saved.get("epochs") != cfg.epochs:
        differences.append(f"epochs {saved.get('epochs')!r} there, {cfg.epochs!r} now")
    recorded = saved.get("data_files")
    if recorded and data_files and sorted(f["sha256"] for f in recorded) != sorted(f["sha256"] for f in data_files):
        differences.append("data files with other SHA-256: " + ", ".join(f["path"] for f in recorded))
    return differences


def _saved_result(cfg: TrainConfig, data_files=()) -> dict[str, Any] | None:
    """The finished run's ``result.json`` if it was made with exactly ``cfg``'s settings (and, where
    recorded, data files with the same contents as ``data_files``), else None."""
    saved = _read_result(Path(cfg.out_dir))
    if saved is None or _result_differences(saved, cfg, data_files):
        return None
    if "threads" not in saved:  # results written before threads were recorded: the run's own config
        config = Path(cfg.out_dir) / "config.json"
        saved["threads"] = json.loads(config.read_text()).get("threads") if config.is_file() else None
    return saved


def _run_one(cfg: TrainConfig, datasets) -> dict[str, Any]:
    """Train one run of the comparison and write its ``result.json``."""
    path = Path(cfg.out_dir) / "result.json"
    t0 = time.perf_counter()
    out = train(cfg, datasets, label=run_label(cfg))
    history = out["history"]
    result = {
        "result_key": cfg.result_key(),
        "epochs": cfg.epochs,
        "final_top1": history[-1]["eval_top1"],
        "best_top1": max(h["eval_top1"] for h in history),
        "final_eval_loss": history[-1]["eval_loss"],
        # Epoch 0 includes one-off start-up costs; the median over epochs is the steady rate.
        "train_img_s": median_known(h.get("train_img_s") for h in history),
        "curve_top1": [h["eval_top1"] for h in history],
        "curve_train_loss": [h.get("train_loss") for h in history],
        "wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "data_files": list(datasets[2].files),
        "provenance": out["provenance"],
    }
    write_result_json(path, result)
    return result


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_table(results: dict[str, Any]) -> str:
    """The Markdown table of a ``results`` dict."""
    n_seeds = len(results["seeds"])
    lines = [
        f"| attention | top-1 % (mean ± std, {n_seeds} seed{'s' if n_seeds > 1 else ''}) | params | MACs | "
        "train img/s | eval img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in results["methods"].items():
        acc = f"{m['top1_mean']:.2f} ± {m['top1_std']:.2f}" if m["top1_std"] is not None else f"{m['top1_mean']:.2f}"
        lines.append(
            f"| {name} | {acc} | {_human(m['params'])} | {_human(m['macs'])} | "
            f"{'–' if m['train_img_s'] is None else format(m['train_img_s'], '.0f')} | "
            f"{'–' if m['eval_img_s'] is None else format(m['eval_img_s'], '.0f')} |"
        )
    return "\n".join(lines)


def _train_threads(results: dict[str, Any]) -> str:
    threads = {r.get("threads") for m in results["methods"].values() for r in m["runs"].values()}
    return ", ".join(sorted("unknown" if t is None else str(t) for t in threads)) or "–"


def _write_outputs(
    out: Path, results: dict[str, Any], cc: CompareConfig, info, figures: bool = False
) -> dict[str, Any]:
    """Write the results files under the folder's results lock, merged with the finished runs other compare
    processes left in ``out`` (see :func:`_merge_finished_runs`); returns what was written."""
    with results_lock(out):
        merged = _merge_finished_runs(out, results, cc, info)
        _write_files(out, merged, figures)
    return merged


def _merge_finished_runs(out: Path, results: dict[str, Any], cc: CompareConfig, info) -> dict[str, Any]:
    """``results`` plus a row for each other attention whose runs for all of ``cc.seeds`` are finished in
    ``out/runs`` with this job's settings and data. Their eval img/s comes from the ``results.json``
    of the process that measured it (None until it has)."""
    methods = dict(results["methods"])
    try:  # only the eval img/s of other processes' rows comes from here; the runs are read from their folders
        previous = read_result_json(out / "results.json")
    except ResultFileError:  # missing, or changed since it was written: measured again where needed
        previous = {}
    previous_methods = previous.get("methods", {}) if _same_setup(previous.get("config"), cc.base) else {}
    runs_dir = out / "runs"
    found = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    found = [n for n in DEFAULT_ATTENTIONS if n in found] + [n for n in found if n not in DEFAULT_ATTENTIONS]
    merged = []
    for name in found:
        if name in cc.attentions or name not in list_attentions():
            continue  # this job's own rows, or runs this version cannot rebuild
        runs = {str(s): _saved_result(_run_config(cc, out, name, s), info.files) for s in cc.seeds}
        if any(r is None for r in runs.values()):
            continue
        row = previous_methods.get(name, {})
        keys = ("params", "macs", "mac_counter", "eval_img_s", "eval_img_s_rounds")
        method = (
            {k: row[k] for k in keys if k in row}
            if "params" in row
            else _probe(cc.base.replace(attention=name), info)[1]
        )
        method.setdefault("eval_img_s", None)
        method["runs"] = runs
        _summarise(method)
        methods[name] = method
        merged.append(name)
    return {
        **results,
        "attentions": [*results["attentions"], *merged],
        "methods": methods,
        "merged_from_folder": merged,
    }


def _same_setup(config: dict[str, Any] | None, base: TrainConfig) -> bool:
    """Whether a results.json ``config`` describes the same training as ``base`` (attention, seed aside)."""
    if not isinstance(config, dict):
        return False
    mine = json.loads(json.dumps(base.to_dict()))
    keys = [k for k in RESULT_FIELDS if k not in ("attention", "seed")] + ["epochs"]
    return all(saved_field(config, k) == mine[k] for k in keys)


def _write_files(out: Path, results: dict[str, Any], figures: bool) -> None:
    cfg, info, env = results["config"], results["dataset"], results["environment"]
    header = (
        f"Dataset {info['name']} ({info['train_size']} train / {info['eval_size']} eval images, "
        f"{info['image_size']}×{info['image_size']}); ViT embed {cfg['embed_dim']}, depth {cfg['depth']}, "
        f"heads {cfg['num_heads']}, patch {cfg['patch_size']}; {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"AdamW lr {cfg['lr']}, seeds {results['seeds']}. Machine: {env['cpu_count']} CPUs, torch {env['torch']}, "
        f"{describe_provenance(env)}; "
        f"training threads per run: {_train_threads(results)}. Top-1 = final-epoch accuracy on the evaluation "
        f"split. Train img/s: median over epochs, then over seeds. MACs per image: "
        f"{next(iter(results['methods'].values()))['mac_counter'] if results['methods'] else ''}. "
        f"Eval img/s: {results['throughput_protocol']}."
    )
    if results.get("merged_from_folder"):
        header += (
            f" Rows {', '.join(results['merged_from_folder'])}: finished runs that other compare processes wrote "
            "into this folder, with the eval img/s those processes measured ('–': not yet measured)."
        )
    table = format_table(results)
    note = quick_note("compare", results.get("preset", "custom"))
    below = f"\n{note}\n" if note else ""
    atomic_write_bytes(out / "results.md", (header + "\n\n" + table + "\n" + below).encode())
    write_result_json(out / "results.json", results)
    if figures:
        print("\n" + table + "\n" + below, flush=True)
        _plot(out, results)


def _plot(out: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in results["methods"].items():
        curves = [r["curve_top1"] for r in m["runs"].values()]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
        ax.plot(range(1, len(mean) + 1), mean, marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="eval top-1 % (mean over seeds)", title="Accuracy per epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_curves.png", dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in results["methods"].items():
        if m["eval_img_s"] is None:  # a row merged from another process that has not measured it yet
            continue
        ax.errorbar(m["eval_img_s"], m["top1_mean"], yerr=m["top1_std"] or 0, fmt="o", capsize=3, label=name)
        ax.annotate(name, (m["eval_img_s"], m["top1_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="evaluation images/s", ylabel="eval top-1 % (mean ± std)", title="Accuracy vs throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_vs_throughput.png", dpi=120)
