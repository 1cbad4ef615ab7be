"""The lines a person reads at the start and the end of ``train``, ``eval``, ``sr train``, ``lra train``.

A start line names what runs — model, attention, data (source and size), device and threads, the output
folder — and a summary line at the end says how it went in words. The machine-readable record stays in the
run folder (``final.json``) and is printed only with ``--json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "add_json_option",
    "start_line",
    "summary_line",
    "eval_line",
    "print_json",
    "data_words",
    "where",
    "say",
    "is_main_process",
]

#: How the final metric of each task reads.
_METRICS = {"top1": ("top-1", "%"), "psnr": ("PSNR-Y", " dB")}


def add_json_option(p) -> None:
    """``--json [FILE]``: the machine-readable result, printed (``--json`` alone) or written to FILE."""
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="also give the result as JSON: printed as one line with --json alone, written to FILE with --json FILE",
    )


def is_main_process() -> bool:
    """False in the processes of rank > 0 under torchrun, which print nothing of their own."""
    return int(os.environ.get("RANK", "0")) == 0


def say(line: str) -> None:
    """Print a line a person reads (rank 0 only)."""
    if is_main_process():
        print(line, flush=True)


def print_json(args, record: dict[str, Any]) -> None:
    """The ``--json`` of ``args``: print ``record`` as one line, or write it to the file named."""
    target = getattr(args, "json", None)
    if target is None:
        return
    if target == "-":
        print(json.dumps(record))
        return
    from mirrorla.engine.checkpoint import atomic_write_bytes

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(target), json.dumps(record, indent=1).encode())


def where(cfg: Any) -> str:
    """The device and threads a run uses, e.g. 'cpu, 2 threads'."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = cfg.threads or torch.get_num_threads()
    return device if device.startswith("cuda") else f"{device}, {threads} thread{'s' if threads != 1 else ''}"


def data_words(info: Any, eval_only: bool = False) -> str:
    """A dataset in words: its name, its sizes (``eval_only``: the evaluation split's) and the folder(s) its
    files came from."""
    name = getattr(info, "name", None) or getattr(info, "task", "data")
    train, test = getattr(info, "train_size", None), getattr(info, "eval_size", None)
    unit = "patches" if hasattr(info, "patch") else "examples" if hasattr(info, "task") else "images"
    sizes = f"{train:,} train / {test:,} eval {unit}" if train is not None and test is not None else ""
    if eval_only:
        sizes = f"{test:,} eval {unit}" if test is not None else ""
    folders = sorted({str(Path(f["path"]).parent) for f in getattr(info, "files", ()) if f.get("path")})
    source = getattr(info, "source", "") or getattr(info, "eval_source", "")
    origin = f"from {folders[0]}" + (f" (+{len(folders) - 1} more)" if len(folders) > 1 else "") if folders else ""
    origin = origin or (f"({source})" if source and source != name else "")
    return " ".join(part for part in (name, f"({sizes})" if sizes else "", origin) if part)


def start_line(cfg: Any, info: Any) -> str:
    """``train ... : model vit, attention mirror, data ..., cpu, 1 thread, output runs/train``."""
    epochs = f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"
    out = cfg.out_dir or "(none: nothing is saved)"
    return (
        f"training {cfg.model} with attention {cfg.attention} on {data_words(info)}; {epochs}, "
        f"{where(cfg)}; output {out}"
    )


def _metric(final: dict[str, Any], metric: str, prefix: str = "eval_") -> str:
    label, unit = _METRICS.get(metric, (metric, ""))
    value = final.get(f"{prefix}{metric}")
    return f"{label} {value:.2f}{unit}" if isinstance(value, (int, float)) else f"{label} –"


def summary_line(final: dict[str, Any], metric: str, run_dir: str | None, seconds: float) -> str:
    """``done in 312 s: eval top-1 79.40% (best 79.40%), 139,530 parameters; run folder ...``."""
    best = final.get(f"best_{metric}")
    label, unit = _METRICS.get(metric, (metric, ""))
    best_words = f" (best epoch {best:.2f}{unit})" if isinstance(best, (int, float)) else ""
    saved = f"; run folder {run_dir} (metrics.jsonl, final.json, checkpoints/)" if run_dir else ""
    return (
        f"done in {seconds:.0f} s: eval {_metric(final, metric)}{best_words} after {final.get('epochs')} "
        f"epoch{'s' if final.get('epochs') != 1 else ''}, {final.get('params', 0):,} parameters{saved}"
    )


def eval_line(what: str, result: dict[str, Any], metric: str = "top1") -> str:
    """``<what>: top-1 79.40% on 10,000 images (loss 0.612)``."""
    n = result.get("eval_images", result.get("eval_count"))
    loss = result.get("eval_loss")
    return (
        f"{what}: {_metric(result, metric)}"
        + (f" on {int(n):,} images" if isinstance(n, (int, float)) else "")
        + (f" (loss {loss:.4f})" if isinstance(loss, (int, float)) else "")
    )
