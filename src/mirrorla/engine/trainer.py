"""The training loop: AdamW, warmup + cosine, label smoothing, Mixup/CutMix, EMA, AMP, DDP, checkpoints.

Reproducibility. Every source of randomness is re-seeded at the start of each epoch from
(seed, epoch, rank): the data order (identical on all ranks, then sharded), the augmentation
generator, the global torch RNG (dropout, drop path) and numpy's RNG (timm's Mixup draws from it).
A run resumed from the checkpoint of epoch e therefore computes exactly what the uninterrupted run
computed in epochs e+1, … on the same machine and thread count.

Outputs of a run directory (rank 0 only): ``config.json`` (with the paths and SHA-256 of the data
files read), ``metrics.jsonl`` (one JSON object per epoch), ``checkpoints/`` (see
:mod:`mirrorla.engine.checkpoint`) and ``final.json``. While a process trains into it the folder
holds ``run.lock``; a new run needs an empty folder or ``overwrite`` (:mod:`mirrorla.engine.run_folder`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mirrorla.data import InMemoryImages
from mirrorla.engine.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    clean_run_dir,
    explain_write_errors,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    write_result_json,
)
from mirrorla.engine.config import RESULT_FIELDS, TrainConfig, saved_field
from mirrorla.engine.distributed import (
    DistEnv,
    all_gather_floats,
    all_reduce_sum,
    cleanup_distributed,
    setup_distributed,
)
from mirrorla.engine.model import count_params
from mirrorla.engine.optim import create_optimizer
from mirrorla.engine.run_folder import claim_run_folder, resumed_run_folder
from mirrorla.tasks import Task, create_task

__all__ = ["train", "evaluate", "warmup_cosine", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf, or DDP replicas hold different weights."""


def warmup_cosine(step: int, total: int, warmup: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """Learning rate at optimiser ``step``: linear from ``warmup_lr`` to ``lr`` over ``warmup`` steps, then a
    half cosine from ``lr`` down to ``min_lr`` at step ``total``."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2**31 - 1)


def _train_indices(n: int, cfg: TrainConfig, epoch: int, env: DistEnv) -> list[list[int]]:
    """This rank's batches for ``epoch``: a seeded permutation shared by all ranks, sharded rank::world,
    cut into full batches (every rank runs the same number of steps, which DDP requires)."""
    g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    perm = torch.randperm(n, generator=g)
    per_rank = n // env.world_size
    mine = perm[env.rank :: env.world_size][:per_rank]
    steps = per_rank // cfg.batch_size
    if steps == 0:
        raise ValueError(
            f"{n} training images over {env.world_size} process(es) do not fill one batch of {cfg.batch_size}; "
            "lower --batch-size or use more data"
        )
    return [mine[i * cfg.batch_size : (i + 1) * cfg.batch_size].tolist() for i in range(steps)]


def _batches(
    dataset: Dataset, batches: list[list[int]], cfg: TrainConfig, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (inputs, labels (B,)) on ``device`` for the given index batches: images float (B, C, S, S),
    or whatever a dataset with ``get_batch`` returns (token ids (B, L))."""
    if isinstance(dataset, InMemoryImages):
        for idx in batches:
            x, y = dataset.get_batch(torch.tensor(idx))
            yield dataset.prepare_batch(x, generator).to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    if hasattr(dataset, "get_batch"):  # in-memory token sequences (mirrorla.data.lra): no per-item collation
        for idx in batches:
            x, y = dataset.get_batch(torch.tensor(idx))
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.workers,
        generator=generator,  # seeds the workers, hence their augmentation, per epoch
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    env: DistEnv | None = None,
    batch_size: int | None = None,
    task: Task | None = None,
) -> dict[str, float]:
    """The task's evaluation metrics on ``dataset`` (classification: top-1/top-5 accuracy in % and mean
    cross-entropy), each sample counted exactly once, and ``count``, the number of samples.

    Under DDP each rank takes samples rank::world (no padding) and the sums are all-reduced.
    """
    env = env or DistEnv()
    task = task or create_task(cfg.task, cfg)
    bs = batch_size or cfg.batch_size
    model.eval()
    idx = list(range(env.rank, len(dataset), env.world_size))
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    sums: dict[str, float] = {}
    count = 0.0
    for x, y in _batches(dataset, batches, cfg.replace(augment=False), torch.Generator(), env.device):
        with _autocast(cfg, env.device):
            output = model(x)
        for name, value in task.eval_sums(output.float(), y).items():
            sums[name] = sums.get(name, 0.0) + value
        count += y.shape[0]
    names = sorted(sums)
    *totals, count = all_reduce_sum([sums[n] for n in names] + [count], env)
    if count == 0:
        raise ValueError("the evaluation dataset is empty")
    return {**{n: t / count for n, t in zip(names, totals, strict=True)}, "count": count}


def _param_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def parse_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str], bool]:
    """(records, problems, torn_last) of ``metrics.jsonl``: every line that is a JSON object with an integer
    ``epoch``, in file order; what is wrong with the others; whether the only bad line is the last one.

    A crash in the middle of an append leaves the last line incomplete and without its newline (and a
    power loss can leave any line not yet on disk missing). Problems: lines that are not records,
    duplicated epochs, epochs out of order.
    """
    lines = path.read_text().split("\n")  # the last item is "" when the file ends with a newline
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    bad_lines: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not a JSON object with an integer 'epoch'")
        except ValueError as err:
            problems.append(f"line {number} is not a record ({err}): {line[:60]!r}")
            bad_lines.append(number)
            continue
        if records and record["epoch"] == records[-1]["epoch"]:
            same = "the same record" if record == records[-1] else "a different record"
            problems.append(f"line {number} repeats epoch {record['epoch']} ({same})")
        elif records and record["epoch"] < records[-1]["epoch"]:
            problems.append(f"line {number} (epoch {record['epoch']}) follows epoch {records[-1]['epoch']}")
        records.append(record)
    return records, problems, bad_lines == [len(lines)]


def _history_from_metrics(path: Path, resume_epoch: int) -> tuple[list[dict[str, Any]], bool]:
    """(records of epochs 0 .. ``resume_epoch``, whether the record of ``resume_epoch`` is missing) from
    ``metrics.jsonl``, for a checkpoint that does not carry its run's history (written before it did).

    Dropped with a warning: a last line cut short by a crash, an exact repeat of the line before.
    Anything else (a bad line before the last, two different records of one epoch, epochs out of
    order or missing before ``resume_epoch``) is an error: no interrupted append leaves it, and the
    run's curves would be wrong.
    """
    records, problems, torn_last = parse_metrics(path) if path.is_file() else ([], [], False)
    if torn_last:
        warnings.warn(f"{path}: dropping its last line, cut short by an interrupted write", stacklevel=3)
        problems = problems[:-1]
    kept: list[dict[str, Any]] = []
    for record in records:
        if kept and record == kept[-1]:
            warnings.warn(f"{path}: dropping a repeated line of epoch {record['epoch']}", stacklevel=3)
        else:
            kept.append(record)
    problems = [p for p in problems if "(the same record)" not in p]
    kept = [r for r in kept if r["epoch"] <= resume_epoch]
    epochs = [r["epoch"] for r in kept]
    if problems or epochs != list(range(len(epochs))) or len(epochs) < resume_epoch:
        detail = "; ".join(problems) or f"it holds the epochs {epochs}, expected 0 to {resume_epoch}"
        raise ValueError(
            f"{path} is damaged: {detail}. The checkpoint of epoch {resume_epoch} does not carry the run's "
            "history (it was written by an older mirrorla), so the lost records cannot be restored: repair the "
            "file, or start the run again with --overwrite"
        )
    return kept, len(epochs) == resume_epoch


class _MetricsLog:
    """``metrics.jsonl`` written by rank 0: ``history`` (the records a resumed run starts from) first, then one
    line per epoch, flushed to disk before the epoch's checkpoint is written."""

    def __init__(self, path: Path | None, history: list[dict[str, Any]] | None) -> None:
        self.path = path
        if path is None:
            return
        if history is None:
            with explain_write_errors(path):
                path.write_text("")
        else:
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            # A disk that fills up in the middle of the line leaves it torn; resume restores the line from
            # the checkpoint, which carries the run's history.
            with explain_write_errors(self.path), open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def train(
    cfg: TrainConfig,
    datasets: tuple[Dataset, Dataset, Any] | None = None,
    *,
    label: str | None = None,
    task: Task | str | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` and return ``{"history": [per-epoch metrics], "final": {...}, "run_dir": ...}``.

    ``datasets`` = (train, eval, DatasetInfo) overrides ``cfg.dataset`` (tests and ``compare`` pass data
    they have already loaded). ``label`` starts every line the run prints (``compare``: the attention
    and seed). The task (``cfg.task``; a name here overrides it, a task object replaces it) supplies the
    data, model, loss and metrics; the loop is the same for every task. Under torchrun, call it in
    every process.
    """
    if isinstance(task, str) and task != cfg.task:
        cfg = cfg.replace(task=task)
    task = create_task(cfg.task, cfg) if task is None or isinstance(task, str) else task
    env = setup_distributed(cfg.device)
    try:
        with _claim_run_folder(cfg, env):
            return _train(cfg, env, datasets, label, task)
    finally:
        cleanup_distributed()


def _claim_run_folder(cfg: TrainConfig, env: DistEnv) -> contextlib.AbstractContextManager:
    """Rank 0's lock on the run folder, taken before anything in it is read or written (see
    :func:`~mirrorla.engine.run_folder.claim_run_folder`). A resumed run continues in its own folder."""
    run_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if cfg.resume:
        resumed = resumed_run_folder(cfg.resume)
        if resumed is not None and run_dir is not None and run_dir.resolve() != resumed.resolve():
            raise ValueError(
                f"--out {run_dir} is not the folder of the resumed run, {resumed}: a resumed run continues in its "
                f"own folder, next to its metrics and checkpoints. To continue a copy elsewhere, copy the folder "
                f"(cp -r {resumed} {run_dir}) and pass --resume {run_dir}"
            )
        # A lone checkpoint file (not in a run's checkpoints/) without out_dir: the folder _train writes to.
        run_dir = run_dir or resumed or resolve_checkpoint(cfg.resume)[0].parent.parent
    if run_dir is None or not env.is_main:
        return contextlib.nullcontext()
    return claim_run_folder(run_dir, resume=bool(cfg.resume), overwrite=cfg.overwrite)


def _train(cfg: TrainConfig, env: DistEnv, datasets, label: str | None, task: Task) -> dict[str, Any]:
    from timm.utils import ModelEmaV3

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if (cfg.save_checkpoints and cfg.out_dir) or cfg.resume:
        import importlib.util

        if importlib.util.find_spec("safetensors") is None:  # fail before training, not at the first save
            raise ModuleNotFoundError("checkpoints need the package safetensors: pip install 'mirrorla[train]'")
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        _check_checkpoint_run(resume)
        check_resume_config(cfg, resume["state"]["config"])
    run_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if run_dir is None and cfg.resume:
        run_dir = Path(resume["path"]).parent.parent
    if datasets is None:
        datasets = task.build_datasets(cfg)
    train_set, eval_set, info = datasets
    if resume is not None and run_dir is not None:
        check_resume_data(run_dir / "config.json", info)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = task.build_model(cfg, info).to(env.device)
    optimizer = create_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_train_indices(len(train_set), cfg, 0, env))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, total_steps, warmup_steps, 1.0, cfg.warmup_lr / cfg.lr, cfg.min_lr / cfg.lr),
    )
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp == "fp16")
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    criterion, batch_transform = task.build_loss(cfg, info)
    metric = task.metric  # ranks epochs: best_<metric>, higher is better

    start_epoch, global_step, best = 0, 0, -math.inf
    if resume is not None:
        _load_weights(model, resume["model"], resume["path"])
        if ema is not None:
            if resume["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but ema_decay > 0")
            _load_weights(ema.module, resume["ema"], resume["path"])
        st = resume["state"]
        _load_optimizer_state(optimizer, model, st, resume["state_path"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch, global_step, best = st["epoch"] + 1, st["global_step"], st[f"best_{metric}"]

    ddp_model: nn.Module = model
    if env.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    params = count_params(model)
    made_by = _provenance(run_dir, env.device, resume is not None)
    if env.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_record = {**cfg.to_dict(), "dataset_info": info.__dict__, "params": params, "world_size": env.world_size,
                      "provenance": made_by}  # fmt: skip
        atomic_write_bytes(run_dir / "config.json", json.dumps(cfg_record, indent=2, default=str).encode())
    if env.is_main and run_dir is not None:
        # Leftovers of an interrupted write or prune (temporary files, orphan checkpoints). Only here, after
        # the run directory is set up and locked against a second writer, and never the checkpoint resumed.
        clean_run_dir(run_dir, keep=cfg.keep_checkpoints, protect=[resume["path"]] if resume else [])
    history: list[dict[str, Any]] = []
    if resume is not None:
        history = _resumed_history(
            resume,
            run_dir,
            lambda: _evaluate_record(
                model, ema, eval_set, cfg, env, task, optimizer, start_epoch - 1, global_step, best
            ),
        )
    log = _MetricsLog(run_dir / "metrics.jsonl" if (env.is_main and run_dir) else None, history if resume else None)

    for epoch in range(start_epoch, cfg.epochs):
        seed = _epoch_seed(cfg.seed, epoch, env.rank)
        torch.manual_seed(seed)
        np.random.seed(seed)
        aug_gen = torch.Generator().manual_seed(seed)
        batches = _train_indices(len(train_set), cfg, epoch, env)
        ddp_model.train()
        loss_sum = seen = 0.0
        batch_sums: dict[str, float] = {}
        desc = f"{label + ' ' if label else ''}epoch {epoch + 1}/{cfg.epochs}"
        progress = _progress(len(batches), desc, cfg.progress and env.is_main)
        t0 = time.perf_counter()
        # Ctrl-C (or an error) in the middle of an epoch: the bar goes, so the one-line message stays readable.
        closing = contextlib.closing(progress) if progress is not None else contextlib.nullcontext()
        with closing:
            for x, y in _batches(train_set, batches, cfg, aug_gen, env.device):
                target = y
                if batch_transform is not None:
                    x, target = batch_transform(x, y)
                with _autocast(cfg, env.device):
                    output = ddp_model(x)
                    loss = criterion(output.float(), target)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss is {loss.item()} at epoch {epoch}, step {global_step}; lower --lr, keep --clip-grad, "
                        "or try --amp bf16 instead of fp16"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                if ema is not None:
                    ema.update(model, step=global_step)
                n = y.shape[0]
                loss_sum += loss.item() * n
                for name, value in task.batch_sums(output.detach(), y).items():
                    batch_sums[name] = batch_sums.get(name, 0.0) + value
                seen += n
                if progress is not None:
                    elapsed = time.perf_counter() - t0
                    progress.set_postfix(
                        loss=f"{loss_sum / seen:.4f}",
                        **{name: f"{value / seen:.1f}" for name, value in batch_sums.items()},
                        img_s=f"{seen * env.world_size / max(elapsed, 1e-9):.0f}",
                        refresh=False,
                    )
                    progress.update(1)
        train_time = time.perf_counter() - t0
        names = sorted(batch_sums)
        loss_sum, seen, *totals = all_reduce_sum([loss_sum, seen] + [batch_sums[n] for n in names], env)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            **{f"train_{n}": t / seen for n, t in zip(names, totals, strict=True)},
            "train_images": int(seen),
            "train_time_s": train_time,
            "train_img_s": seen / train_time,
        }
        t1 = time.perf_counter()
        ev = evaluate(model, eval_set, cfg, env, task=task)
        record.update({f"eval_{k}": v for k, v in ev.items() if k != "count"})
        record["eval_images"] = int(ev["count"])
        if ema is not None:
            ev_ema = evaluate(ema.module, eval_set, cfg, env, task=task)
            record.update({f"ema_eval_{k}": v for k, v in ev_ema.items() if k != "count"})
        record["eval_time_s"] = time.perf_counter() - t1
        best = max(best, record[f"eval_{metric}"], record.get(f"ema_eval_{metric}", -math.inf))
        record[f"best_{metric}"] = best
        if env.distributed:
            sums = all_gather_floats(_param_checksum(model), env)
            record["rank_param_checksums"] = sums
            if len(set(sums)) != 1:
                raise TrainingDivergedError(f"DDP replicas hold different weights after epoch {epoch}: {sums}")
        history.append(record)
        log.write(record)
        if env.is_main:
            _print_epoch(record, cfg, label, metric)
            if cfg.save_checkpoints and run_dir is not None:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "param_group_names": _param_group_names(model, optimizer),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "global_step": global_step,
                    f"best_{metric}": best,
                    "config": cfg.to_dict(),
                    "torch_rng": torch.get_rng_state(),
                    # The records of every epoch so far: metrics.jsonl is appended without the checkpoint's
                    # guarantees, so a resume restores from here what a crash cut or lost there.
                    "history": history,
                }
                save_checkpoint(
                    run_dir / "checkpoints",
                    epoch,
                    model.state_dict(),
                    state,
                    ema_state=ema.module.state_dict() if ema is not None else None,
                    keep=cfg.keep_checkpoints,
                )
    final = {
        "params": params,
        "world_size": env.world_size,
        "epochs": cfg.epochs,
        **({k: history[-1][k] for k in history[-1] if k.startswith(("eval_", "ema_eval_", "best"))} if history else {}),
    }
    if env.is_main and run_dir is not None:
        write_result_json(run_dir / "final.json", final)
    return {
        "history": history,
        "final": final,
        "provenance": made_by,
        "run_dir": str(run_dir) if run_dir else None,
        "model": model,
        "optimizer": optimizer,
    }


def _resumed_history(resume: dict[str, Any], run_dir: Path | None, evaluate_last) -> list[dict[str, Any]]:
    """The per-epoch records of a resumed run up to its checkpoint's epoch E, and ``metrics.jsonl`` checked
    against them (the caller rewrites the file from them).

    The checkpoint carries the history (checkpoints since the state has a ``history``): it is the
    record, and a metrics file that differs from it (a line torn or lost by a crash, repeated, out of
    order, edited) is restored with a warning. Older checkpoints: the records come from the file
    (:func:`_history_from_metrics`); if the last one, epoch E's, is missing, E's evaluation metrics are
    recomputed from the checkpoint (``evaluate_last()``), never taken from the epoch before.
    """
    st = resume["state"]
    epoch = st["epoch"]
    path = run_dir / "metrics.jsonl" if run_dir is not None else None
    saved = st.get("history")
    if isinstance(saved, list) and [r.get("epoch") for r in saved] == list(range(epoch + 1)):
        if path is not None:
            records, problems, _ = parse_metrics(path) if path.is_file() else ([], ["it is missing"], False)
            if [r for r in records if r["epoch"] <= epoch] != saved or problems:
                why = "; ".join(problems) or "its records differ from those the checkpoint carries"
                warnings.warn(
                    f"{path}: restored the records of epochs 0 to {epoch} from the checkpoint {resume['state_path']} "
                    f"({why})",
                    stacklevel=3,
                )
        return list(saved)
    if path is None:
        return []
    history, last_missing = _history_from_metrics(path, epoch)
    if last_missing:
        warnings.warn(
            f"{path} has no record of epoch {epoch}, the epoch of the checkpoint {resume['state_path']} (a crash "
            "before the line reached the disk): its evaluation metrics are recomputed from the checkpoint",
            stacklevel=3,
        )
        history.append(evaluate_last())
    return history


def _evaluate_record(
    model, ema, eval_set, cfg: TrainConfig, env: DistEnv, task: Task, optimizer, epoch: int, step: int, best: float
) -> dict[str, Any]:
    """The evaluation part of an epoch's record, recomputed from the weights just loaded from its checkpoint
    (the training part, measured while it trained, is lost); marked ``recomputed_from_checkpoint``."""
    metric = task.metric
    ev = evaluate(model, eval_set, cfg, env, task=task)
    record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"]}
    record.update({f"eval_{k}": v for k, v in ev.items() if k != "count"})
    record["eval_images"] = int(ev["count"])
    if ema is not None:
        ev_ema = evaluate(ema.module, eval_set, cfg, env, task=task)
        record.update({f"ema_eval_{k}": v for k, v in ev_ema.items() if k != "count"})
    record[f"best_{metric}"] = best
    record["recomputed_from_checkpoint"] = True
    return record


def _check_checkpoint_run(resume: dict[str, Any]) -> None:
    """The checkpoint's settings agree with the ``config.json`` of the run directory it lies in.

    A weights/state pair copied in from another run passes the checksums (the two files belong
    together) but would continue a different model in this directory.
    """
    weights_path = Path(resume["path"])
    config_path = weights_path.parent.parent / "config.json"
    if weights_path.parent.name != "checkpoints" or not config_path.is_file():
        return  # not inside a run directory: nothing to compare with
    try:
        recorded = json.loads(config_path.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {config_path} ({err}) to check that {resume['state_path']} belongs to this run; "
            "repair it or resume from a copy of the checkpoint outside the run directory"
        ) from err
    saved = resume["state"]["config"]
    as_json = lambda value: json.loads(json.dumps(value, default=str))  # noqa: E731 (tuples → lists)
    diffs = [
        f"{k} {saved[k]!r} vs {recorded[k]!r}"
        for k in RESULT_FIELDS
        if k in saved and k in recorded and as_json(saved[k]) != recorded[k]
    ]
    if diffs:
        raise CheckpointError(
            f"{resume['state_path']} does not belong to the run of {config_path}; these settings differ "
            f"(checkpoint vs config.json): {', '.join(diffs)}. The checkpoint was copied from another run: put "
            "this run's own checkpoint files back, or resume the other run from its own directory"
        )


def _load_weights(module: nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    """``module.load_state_dict(weights)``, with a one-line error naming the file if they do not fit."""
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} has shape {tuple(v.shape)}, the model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{path} does not fit the model built from the run's settings: {'; '.join(problems[:3])}{more}. "
            "It comes from another model or version: resume with the settings it was saved with, or start a new run"
        )
    module.load_state_dict(weights)


def _param_group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The parameter names of each optimizer group, in order (saved so a resume can check them)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _param_groups_problem(optimizer: torch.optim.Optimizer, model: nn.Module, st: dict[str, Any]) -> str | None:
    """How the saved optimizer groups differ from this model's, or None if they agree."""
    current = _param_group_names(model, optimizer)
    saved_names = st.get("param_group_names")  # absent in checkpoints of older versions
    if saved_names is not None:
        for i, (old, new) in enumerate(itertools.zip_longest(saved_names, current, fillvalue=[])):
            if old != new:
                only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
                detail = f"parameter group {i} holds {len(old)} parameters in the checkpoint, {len(new)} in the model"
                detail += f"; only in the checkpoint: {', '.join(only_old[:3])}" if only_old else ""
                detail += f"; only in the model: {', '.join(only_new[:3])}" if only_new else ""
                return detail if only_old or only_new or len(old) != len(new) else detail + " (in another order)"
        return None
    saved_groups = st["optimizer"]["param_groups"]
    sizes_old, sizes_new = [len(g["params"]) for g in saved_groups], [len(g) for g in current]
    if sizes_old != sizes_new:
        return f"parameter group sizes {sizes_old} in the checkpoint, {sizes_new} in the model"
    # torch pairs saved and current parameters by position: check that each moment fits its parameter.
    saved_ids = [i for g in saved_groups for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for pid, param, name in zip(saved_ids, params, itertools.chain(*current), strict=True):
        for key, value in st["optimizer"]["state"].get(pid, {}).items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                return (
                    f"the parameter groups hold other parameters: the {key} of shape {tuple(value.shape)} would "
                    f"go to {name} of shape {tuple(param.shape)}"
                )
    return None


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, st: dict[str, Any], state_path: Path
) -> None:
    """Load the checkpoint's optimizer state after checking that its parameter groups are this model's.

    torch pairs saved and current parameters by position only, so a state whose groups hold other
    parameters (written by a version that grouped them differently) would put moments on wrong tensors.
    """
    problem = _param_groups_problem(optimizer, model, st)
    if problem is not None:
        raise CheckpointError(
            f"the optimizer state in {state_path} does not fit this model's parameter groups: {problem}. It was "
            "written by a version that grouped the parameters differently, or for another model: start a new "
            "run (the weights alone still load, e.g. with `mirrorla eval`)"
        )
    optimizer.load_state_dict(st["optimizer"])


def check_resume_data(config_path: Path, info: Any) -> None:
    """A resumed run reads data files with the same contents (SHA-256) as those its ``config.json`` records.

    Runs written before files were recorded, and data passed in memory, have no files to compare.
    """
    try:
        recorded = json.loads(config_path.read_text()).get("dataset_info", {}).get("files")
    except (OSError, ValueError, AttributeError):
        recorded = None
    current = getattr(info, "files", ())
    if not recorded or not current:
        return
    old, new = {f["sha256"] for f in recorded}, {f["sha256"] for f in current}
    if old != new:
        now = ", ".join(f"{f['path']} ({f['sha256'][:12]}…)" for f in current if f["sha256"] not in old)
        then = ", ".join(f"{f['path']} ({f['sha256'][:12]}…)" for f in recorded if f["sha256"] not in new)
        raise ValueError(
            f"--resume needs the data the run was trained on, but the files read now differ by SHA-256: now {now}; "
            f"the run read {then} ({config_path}). Pass --data-dir with the run's data, or start a new run"
        )


def check_resume_config(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Raise ``ValueError`` listing the settings that change what a run computes (and its epochs) on which
    ``cfg`` and the interrupted run's saved settings disagree."""
    diffs = [
        f"{k}: checkpoint {saved_field(saved, k)!r} vs now {getattr(cfg, k)!r}"
        for k in RESULT_FIELDS
        if saved_field(saved, k) != getattr(cfg, k)
    ]
    if saved.get("epochs") != cfg.epochs:
        diffs.append(f"epochs: checkpoint {saved.get('epochs')!r} vs now {cfg.epochs!r} (changes the schedule)")
    if diffs:
        raise ValueError(
            "--resume needs the same settings as the interrupted run; these differ:\n  " + "\n  ".join(diffs)
        )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)


def _print_epoch(r: dict[str, Any], cfg: TrainConfig, label: str | None = None, metric: str = "top1") -> None:
    from tqdm.auto import tqdm

    ema = f" ema_{metric} {r[f'ema_eval_{metric}']:.2f}" if f"ema_eval_{metric}" in r else ""
    # tqdm.write: a progress bar of the caller (compare's bar over all runs) stays whole below the line.
    tqdm.write(
        f"{label + ' ' if label else ''}epoch {r['epoch'] + 1}/{cfg.epochs}  lr {r['lr']:.2e}  "
        f"train_loss {r['train_loss']:.4f}  eval_loss {r['eval_loss']:.4f}  "
        f"eval_{metric} {r[f'eval_{metric}']:.2f}{ema}  "
        f"{r['train_img_s']:.0f} img/s",
        file=sys.stdout,
    )
    sys.stdout.flush()


def _provenance(run_dir: Path | None, device: torch.device, resumed: bool) -> dict[str, Any]:
    """What produced this run (:func:`mirrorla.bench.machine.provenance`); a resumed run keeps the records of the
    processes that trained it before under ``earlier``, oldest first, so a run continued by other code says so."""
    from mirrorla.bench.machine import provenance

    record = provenance(device)
    if resumed and run_dir is not None:
        try:
            before = json.loads((run_dir / "config.json").read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            before = None
        if isinstance(before, dict):
            record["earlier"] = [*before.pop("earlier", []), before]
    return record


def describe_provenance(environment: dict[str, Any]) -> str:
    """``code <commit>[ with uncommitted changes], CPU capability AVX2`` for a results header, from the
    ``provenance`` of :func:`environment_summary` (``code: not recorded`` for results written before it existed)."""
    made = environment.get("provenance")
    if not made:
        return "code: not recorded"
    code = f"code {made['commit'][:10]}" if made.get("commit") else "code: not a git checkout"
    if made.get("dirty"):
        code += " with uncommitted changes"
    return f"{code}, CPU capability {made.get('cpu_capability')}"


def environment_summary() -> dict[str, Any]:
    """Where a number was measured: versions, threads, device, and what produced it (``provenance``: commit,
    dirty tree, numpy, the CPU capability torch dispatches to; :func:`mirrorla.bench.machine.provenance`)."""
    import platform

    import timm

    from mirrorla.bench.machine import provenance

    return {
        "provenance": provenance("cuda" if torch.cuda.is_available() else "cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
