"""The training loop: AdamW, warmup + cosine, label smoothing, Mixup/CutMix, EMA, AMP, DDP, checkpoints.

Reproducibility. Every source of randomness is re-seeded at the start of each epoch from
(seed, epoch, rank): the data order (identical on all ranks, then sharded), the augmentation
generator, the global torch RNG (dropout, drop path) and numpy's RNG (timm's Mixup draws from it).
A run resumed from the checkpoint of epoch e therefore computes exactly what the uninterrupted run
computed in epochs e+1, … on the same machine and thread count.

Outputs of a run directory (rank 0 only): ``config.json``, ``metrics.jsonl`` (one JSON object per
epoch), ``checkpoints/`` (see :mod:`mirrorla.engine.checkpoint`) and ``final.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mirrorla.data import InMemoryImages, build_datasets
from mirrorla.engine.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from mirrorla.engine.config import RESULT_FIELDS, TrainConfig
from mirrorla.engine.distributed import (
    DistEnv,
    all_gather_floats,
    all_reduce_sum,
    cleanup_distributed,
    setup_distributed,
)
from mirrorla.engine.model import count_params, create_classifier
from mirrorla.engine.optim import create_optimizer

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
    """Yield (images float (B, C, S, S), labels (B,)) on ``device`` for the given index batches."""
    if isinstance(dataset, InMemoryImages):
        for idx in batches:
            x, y = dataset.get_batch(torch.tensor(idx))
            yield dataset.prepare_batch(x, generator).to(device, non_blocking=True), y.to(device, non_blocking=True)
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
    model: nn.Module, dataset: Dataset, cfg: TrainConfig, env: DistEnv | None = None, batch_size: int | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy on ``dataset``, each image counted exactly once.

    Under DDP each rank takes images rank::world (no padding) and the sums are all-reduced.
    """
    env = env or DistEnv()
    bs = batch_size or cfg.batch_size
    model.eval()
    idx = list(range(env.rank, len(dataset), env.world_size))
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    loss_sum = top1 = top5 = count = 0.0
    for x, y in _batches(dataset, batches, cfg.replace(augment=False), torch.Generator(), env.device):
        with _autocast(cfg, env.device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += (topk[:, 0] == y).sum().item()
        top5 += (topk == y[:, None]).any(dim=1).sum().item()
        count += y.numel()
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], env)
    if count == 0:
        raise ValueError("the evaluation dataset is empty")
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "count": count}


def _param_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


class _MetricsLog:
    """``metrics.jsonl`` written by rank 0; on resume, lines after the resumed epoch are dropped."""

    def __init__(self, path: Path | None, resume_epoch: int | None) -> None:
        self.path = path
        if path is None:
            return
        if resume_epoch is None or not path.is_file():
            path.write_text("")
        else:
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= resume_epoch]
            atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, datasets: tuple[Dataset, Dataset, Any] | None = None) -> dict[str, Any]:
    """Train ``cfg`` and return ``{"history": [per-epoch metrics], "final": {...}, "run_dir": ...}``.

    ``datasets`` = (train, eval, DatasetInfo) overrides ``cfg.dataset`` (tests and ``compare`` pass data
    they have already loaded). Under torchrun, call it in every process.
    """
    env = setup_distributed(cfg.device)
    try:
        return _train(cfg, env, datasets)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, env: DistEnv, datasets) -> dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if (cfg.save_checkpoints and cfg.out_dir) or cfg.resume:
        import importlib.util

        if importlib.util.find_spec("safetensors") is None:  # fail before training, not at the first save
            raise ModuleNotFoundError("checkpoints need the package safetensors: pip install 'mirrorla[train]'")
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        _check_resume_config(cfg, resume["state"]["config"])
    run_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if run_dir is None and cfg.resume:
        run_dir = Path(resume["path"]).parent.parent
    if datasets is None:
        datasets = build_datasets(
            cfg.dataset,
            data_dir=cfg.data_dir,
            image_size=cfg.image_size,
            augment=cfg.augment,
            train_subset=cfg.train_subset,
            eval_subset=cfg.eval_subset,
            download=cfg.download,
        )
    train_set, eval_set, info = datasets

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = create_classifier(cfg, info.num_classes, info.in_chans, info.image_size).to(env.device)
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
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            switch_prob=cfg.mixup_switch_prob,
            label_smoothing=cfg.label_smoothing,
            num_classes=info.num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start_epoch, global_step, best_top1 = 0, 0, -1.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        if ema is not None:
            if resume["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but ema_decay > 0")
            ema.module.load_state_dict(resume["ema"])
        st = resume["state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch, global_step, best_top1 = st["epoch"] + 1, st["global_step"], st["best_top1"]

    ddp_model: nn.Module = model
    if env.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    params = count_params(model)
    if env.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_record = {**cfg.to_dict(), "dataset_info": info.__dict__, "params": params, "world_size": env.world_size}
        atomic_write_bytes(run_dir / "config.json", json.dumps(cfg_record, indent=2, default=str).encode())
    log = _MetricsLog(
        run_dir / "metrics.jsonl" if (env.is_main and run_dir) else None, start_epoch - 1 if resume else None
    )
    history: list[dict[str, Any]] = []
    if resume is not None and run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
        history = [h for h in history if h["epoch"] < start_epoch]

    for epoch in range(start_epoch, cfg.epochs):
        seed = _epoch_seed(cfg.seed, epoch, env.rank)
        torch.manual_seed(seed)
        np.random.seed(seed)
        aug_gen = torch.Generator().manual_seed(seed)
        batches = _train_indices(len(train_set), cfg, epoch, env)
        ddp_model.train()
        loss_sum = correct = seen = 0.0
        progress = _progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and env.is_main)
        t0 = time.perf_counter()
        for x, y in _batches(train_set, batches, cfg, aug_gen, env.device):
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with _autocast(cfg, env.device):
                logits = ddp_model(x)
                loss = criterion(logits.float(), target)
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
            correct += (logits.argmax(1) == y).sum().item()
            seen += n
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress.set_postfix(
                    loss=f"{loss_sum / seen:.4f}",
                    acc=f"{100 * correct / seen:.1f}",
                    img_s=f"{seen * env.world_size / max(elapsed, 1e-9):.0f}",
                    refresh=False,
                )
                progress.update(1)
        train_time = time.perf_counter() - t0
        if progress is not None:
            progress.close()
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], env)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            # Against the un-mixed labels; with Mixup/CutMix this is only a rough signal.
            "train_top1": 100.0 * correct / seen,
            "train_images": int(seen),
            "train_time_s": train_time,
            "train_img_s": seen / train_time,
        }
        t1 = time.perf_counter()
        ev = evaluate(model, eval_set, cfg, env)
        record.update({f"eval_{k}": v for k, v in ev.items() if k != "count"})
        record["eval_images"] = int(ev["count"])
        if ema is not None:
            ev_ema = evaluate(ema.module, eval_set, cfg, env)
            record.update({f"ema_eval_{k}": v for k, v in ev_ema.items() if k != "count"})
        record["eval_time_s"] = time.perf_counter() - t1
        best_top1 = max(best_top1, record["eval_top1"], record.get("ema_eval_top1", -1.0))
        record["best_top1"] = best_top1
        if env.distributed:
            sums = all_gather_floats(_param_checksum(model), env)
            record["rank_param_checksums"] = sums
            if len(set(sums)) != 1:
                raise TrainingDivergedError(f"DDP replicas hold different weights after epoch {epoch}: {sums}")
        history.append(record)
        log.write(record)
        if env.is_main:
            _print_epoch(record, cfg)
            if cfg.save_checkpoints and run_dir is not None:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "global_step": global_step,
                    "best_top1": best_top1,
                    "config": cfg.to_dict(),
                    "torch_rng": torch.get_rng_state(),
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
        atomic_write_bytes(run_dir / "final.json", json.dumps(final, indent=2).encode())
    return {
        "history": history,
        "final": final,
        "run_dir": str(run_dir) if run_dir else None,
        "model": model,
        "optimizer": optimizer,
    }


def _check_resume_config(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
        for k in RESULT_FIELDS
        if saved.get(k) != getattr(cfg, k)
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


def _print_epoch(r: dict[str, Any], cfg: TrainConfig) -> None:
    ema = f" ema_top1 {r['ema_eval_top1']:.2f}" if "ema_eval_top1" in r else ""
    print(
        f"epoch {r['epoch'] + 1}/{cfg.epochs}  lr {r['lr']:.2e}  train_loss {r['train_loss']:.4f}  "
        f"eval_loss {r['eval_loss']:.4f}  eval_top1 {r['eval_top1']:.2f}{ema}  {r['train_img_s']:.0f} img/s",
        flush=True,
    )


def environment_summary() -> dict[str, Any]:
    """Where a number was measured: versions, threads, device."""
    import platform

    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
