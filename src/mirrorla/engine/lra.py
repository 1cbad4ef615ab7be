"""Long-range tasks after training: per-example predictions, accuracy by sequence length, the cost of a step,
and loading a trained sequence model.

Dimension letters: B batch, L tokens, K classes.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "predict",
    "accuracy_by_length",
    "length_edges",
    "train_step_cost",
    "load_trained_sequence_model",
    "majority_baseline",
]


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(predicted class, label) for every example of a token dataset (:class:`mirrorla.data.lra.TokenDataset`),
    in dataset order, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for start in range(0, len(dataset), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(dataset)))
        x, y = dataset.get_batch(idx)
        preds.append(model(x.to(device)).argmax(-1).cpu())
        labels.append(y)
    if not preds:
        raise ValueError("the evaluation dataset is empty")
    return torch.cat(preds), torch.cat(labels)


def length_edges(lengths: Tensor, buckets: int = 5) -> list[int]:
    """Bucket edges over the observed lengths: ``buckets`` equal-width ranges from the shortest to the longest."""
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo == hi:
        return [lo, hi + 1]
    step = (hi - lo + 1) / buckets
    return sorted({lo + round(i * step) for i in range(buckets)} | {hi + 1})


def accuracy_by_length(
    preds: Tensor, labels: Tensor, lengths: Tensor, edges: list[int] | None = None
) -> list[dict[str, Any]]:
    """Accuracy (%) per length bucket [edges[i], edges[i+1]): rows {lo, hi, count, top1}; empty buckets skipped."""
    if not (preds.shape == labels.shape == lengths.shape):
        raise ValueError(
            f"preds, labels, lengths must have one shape, got {preds.shape}, {labels.shape}, {lengths.shape}"
        )
    edges = edges or length_edges(lengths)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (lengths >= lo) & (lengths < hi)
        n = int(sel.sum())
        if n:
            rows.append(
                {"lo": lo, "hi": hi - 1, "count": n, "top1": 100.0 * float((preds[sel] == labels[sel]).float().mean())}
            )
    return rows


def majority_baseline(label_counts: tuple[int, ...] | list[int]) -> float:
    """Accuracy (%) of always predicting the most frequent evaluation label: the floor every model must beat."""
    total = sum(label_counts)
    return 100.0 * max(label_counts) / total if total else float("nan")


def train_step_cost(
    model: nn.Module, x: Tensor, y: Tensor, rounds: int = 3, memory: bool = True
) -> dict[str, float | None]:
    """Seconds per training step (forward, cross-entropy, backward, AdamW step; median of ``rounds`` after one
    warm-up) and, with ``memory``, the peak memory of one step (:func:`mirrorla.bench.memory.measure_peak_memory`:
    the resident-set high-water mark on a CPU). The model's weights change (it is a scratch copy)."""
    from mirrorla.bench.memory import measure_peak_memory

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (and AdamW's state)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = measure_peak_memory(step, x.device) if memory else None
    return {"step_s": statistics.median(times), "step_s_rounds": times, "peak_memory_bytes": peak}


def load_trained_sequence_model(
    checkpoint: str | Path, device: str | torch.device = "cpu", ema: bool = False
) -> tuple[nn.Module, Any, Any]:
    """A long-range run's model (eval mode, trained weights), its :class:`TrainConfig` and its dataset facts
    (vocabulary, classes, length, grid; from the run's ``config.json``), from a run folder, its ``checkpoints/``
    folder or a ``.safetensors`` file. No data is read."""
    import json
    from types import SimpleNamespace

    from mirrorla.engine.checkpoint import checkpoint_config, load_checkpoint
    from mirrorla.tasks import create_task

    ckpt = load_checkpoint(checkpoint, weights_only=True)
    cfg = checkpoint_config(ckpt, checkpoint)
    if cfg.task != "long_range":
        raise ValueError(f"{ckpt['path']} is a {cfg.task} run, not a long-range one (mirrorla lra train)")
    path = Path(ckpt["path"]).parent.parent / "config.json"
    try:
        facts = json.loads(path.read_text())["dataset_info"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read the run's dataset facts from {path} ({err}); lra train writes them") from err
    facts["grid"] = tuple(facts["grid"]) if facts.get("grid") else None
    info = SimpleNamespace(**facts)
    model = create_task(cfg.task, cfg).build_model(cfg, info)
    weights = ckpt["ema"] if ema else ckpt["model"]
    if weights is None:
        raise ValueError(f"{ckpt['path']} holds no EMA weights (the run had --ema-decay 0)")
    from mirrorla.engine.distributed import resolve_device
    from mirrorla.engine.weights import describe_settings, load_checked_weights

    load_checked_weights(model, weights, ckpt["path"], describe_settings(cfg))
    return model.to(resolve_device(device)).eval(), cfg, info
