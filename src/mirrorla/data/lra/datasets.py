"""Long Range Arena tasks as token datasets: ``build_lra_datasets(task)`` → ``(train, eval, info)``.

========================  ===========  =====  =======  ================================================
task                      classes      vocab  max_len  data
========================  ===========  =====  =======  ================================================
listops                   10           16     2000     generated (``data_dir=None``) or LRA's TSV files
pathfinder32/64/128       2            256    S²       generated, ``difficulty`` easy / medium / hard
image                     10           256    1024     Fashion-MNIST padded to 32 × 32, one token a pixel
text                      2 (or more)  257    4096     ``imdb_{train,test}.tsv`` in ``data_dir``
retrieval                 2            257    4000     ``new_aan_pairs.{train,test}.tsv`` in ``data_dir``
========================  ===========  =====  =======  ================================================

Defaults, sized for CPU budgets (LRA's in brackets):

- listops: 10,000 train / 1,000 eval generated examples (LRA: 96,000 / 2,000 / 2,000), 500…2,000
  tokens, max depth 10, up to 10 arguments (as LRA's generator). With ``data_dir`` the LRA files
  ``basic_train.tsv`` / ``basic_test.tsv`` are read instead (truncated to ``max_len`` as LRA does).
- pathfinder*: 20,000 train / 2,000 eval (LRA: 200,000 per difficulty split 80 / 10 / 10 %, i.e.
  160,000 / 20,000 / 20,000; its pathfinder32 configs use 160,000 train and 20,000 validation).
- image: all of Fashion-MNIST (60,000 / 10,000), or its first ``train_size`` / ``eval_size`` images.
- text: max_len 4,096 bytes (LRA's paper: 4K; its config file ``base_tc_config.py`` says 1,000);
  retrieval: 4,000 bytes per document (LRA's ``base_match_config.py``). All examples of the files, or the
  first ``train_size`` / ``eval_size``.

The eval split is LRA's test split. Generated tasks draw train example ``i`` from seed ``[seed, 0, i]``
and eval example ``i`` from ``[seed, 1, i]``, and are cached (:mod:`mirrorla.data.lra.cache`) under
``cache_dir`` (default :func:`lra_cache_dir`); ``seed`` and ``cache_dir`` do not affect the other tasks,
and ``difficulty`` only affects Pathfinder.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mirrorla.data.checksums import data_records
from mirrorla.data.lra import tsv
from mirrorla.data.lra.cache import cache_folder, cached_splits, lra_cache_dir
from mirrorla.data.lra.listops import LISTOPS_VOCAB, encode_listops, generate_listops
from mirrorla.data.lra.pathfinder import PATHFINDER_DIFFICULTIES, generate_pathfinder, pathfinder_preset
from mirrorla.data.lra.sequential_image import fashion_mnist_sequences

__all__ = ["LRA_TASKS", "LRAInfo", "TokenDataset", "build_lra_datasets", "lra_cache_dir"]

LRA_TASKS = ("listops", "pathfinder32", "pathfinder64", "pathfinder128", "image", "text", "retrieval")
_LISTOPS = {"train": 10_000, "eval": 1_000, "min_len": 500, "max_len": 2000, "max_depth": 10, "max_args": 10}
_PATHFINDER_SIZES = {"train": 20_000, "eval": 2_000}
_TEXT_MAX_LEN, _RETRIEVAL_MAX_LEN = 4096, 4000
_STREAMS = {"train": 0, "eval": 1}
#: Sequences generated per second on one CPU core (measured, order of magnitude: the estimate is a warning).
_LISTOPS_PER_SECOND, _PATHFINDER_PER_SECOND = 250.0, 250.0
_LONGEST_GENERATION_S = 24 * 3600.0


@dataclass(frozen=True)
class LRAInfo:
    """What a model needs to know about an LRA task, and which files were read.

    grid: (side, side) for pathfinder*/image, else None. pad_id: 0 for listops/text/retrieval, None for
    images (pixel value 0 is a real token). pair: retrieval (two documents per example).
    label_counts: the eval split's label histogram (for the majority-class baseline). files: a record
    per file read or cached (:func:`mirrorla.data.checksums.data_records`).
    """

    task: str
    num_classes: int
    vocab_size: int
    max_len: int
    grid: tuple[int, int] | None
    pad_id: int | None
    pair: bool
    train_size: int
    eval_size: int
    source: str
    difficulty: str | None
    label_counts: tuple[int, ...]
    files: tuple[dict[str, Any], ...]


class TokenDataset(Dataset):
    """Token sequences held in memory.

    tokens: (N, L) or, for pairs, (N, 2, L) integer tensor (any integer dtype; items come out int64).
    labels: (N,) int64. lengths: (N,) or (N, 2) int64, unpadded lengths. Items are
    ``(tokens[i] as int64, int(labels[i]))``; :meth:`get_batch` slices many at once.
    """

    def __init__(self, tokens: Tensor, labels: Tensor, lengths: Tensor) -> None:
        if tokens.ndim not in (2, 3) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(
                f"tokens must be an integer tensor (N, L) or (N, 2, L), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if labels.shape != tokens.shape[:1]:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {tokens.shape[0]} examples")
        if lengths.shape != tokens.shape[:-1]:
            raise ValueError(f"lengths shape {tuple(lengths.shape)} must be {tuple(tokens.shape[:-1])}")
        self.tokens, self.labels, self.lengths = tokens, labels.long(), lengths.long()

    @property
    def pair(self) -> bool:
        return self.tokens.ndim == 3

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.tokens[index].long(), int(self.labels[index])

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, L) or (B, 2, L) int64 and labels (B,) int64 of the examples ``idx`` (B,)."""
        return self.tokens[idx].long(), self.labels[idx]


def _dataset(arrays: dict[str, np.ndarray]) -> TokenDataset:
    return TokenDataset(*(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("tokens", "labels", "lengths")))


def _check_size(value: int | None, option: str) -> None:
    if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{option} must be a positive integer or None (the default size), got {value!r}")


def _first(arrays: dict[str, np.ndarray], limit: int | None, option: str, source: str) -> dict[str, np.ndarray]:
    available = len(arrays["labels"])
    if limit is None:
        return arrays
    if limit > available:
        raise ValueError(
            f"{option} {limit} is larger than the {available} examples available in {source}; pass at most "
            f"{available}, or None for all of them"
        )
    return {k: v[:limit] for k, v in arrays.items()}


def build_lra_datasets(
    task: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    train_size: int | None = None,
    eval_size: int | None = None,
    seed: int = 0,
    max_len: int | None = None,
    difficulty: str = "medium",
) -> tuple[TokenDataset, TokenDataset, LRAInfo]:
    """Train and eval :class:`TokenDataset` of an LRA task and its :class:`LRAInfo` (module docstring).

    Args:
        task: one of :data:`LRA_TASKS`.
        data_dir: listops: read LRA's TSV files from here instead of generating; text/retrieval: the
            folder with the TSV files (required); image: the Fashion-MNIST folder (default: searched);
            pathfinder: must be None (always generated).
        cache_dir: root of the cache of generated data (default :func:`lra_cache_dir`).
        train_size, eval_size: number of examples; None for the defaults above.
        seed: seed of generated data.
        max_len: tokens per sequence (per document for retrieval); listops generation: the longest
            expression (at least 500); pathfinder/image: fixed (S² / 1024), None or that value.
        difficulty: Pathfinder preset, 'easy', 'medium' or 'hard'.

    Raises:
        ValueError: an unknown task or difficulty, a bad size or ``max_len``, missing TSV files, or
            more examples asked for than a file holds; the message says how to fix it.
    """
    if task not in LRA_TASKS:
        raise ValueError(f"unknown LRA task {task!r}; valid tasks: {', '.join(LRA_TASKS)}")
    if difficulty not in PATHFINDER_DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(PATHFINDER_DIFFICULTIES)}, got {difficulty!r}")
    _check_size(train_size, "train_size")
    _check_size(eval_size, "eval_size")
    if max_len is not None and (not isinstance(max_len, numbers.Integral) or max_len <= 0):
        raise ValueError(f"max_len must be a positive integer or None (the task's default), got {max_len!r}")
    if task == "listops" and data_dir is None:
        return _generated_listops(cache_dir, train_size, eval_size, seed, max_len)
    if task.startswith("pathfinder"):
        if data_dir is not None:
            raise ValueError(f"{task} is always generated and reads no files: leave data_dir out (got {data_dir!r})")
        return _generated_pathfinder(task, cache_dir, train_size, eval_size, seed, max_len, difficulty)
    if task == "image":
        return _image(data_dir, train_size, eval_size, max_len)
    return _from_tsv(task, data_dir, train_size, eval_size, max_len)


def _info(task, train, test, *, num_classes, vocab_size, max_len, grid, pad_id, source, difficulty, files) -> LRAInfo:
    counts = np.bincount(test.labels.numpy(), minlength=num_classes)
    return LRAInfo(
        task, num_classes, vocab_size, max_len, grid, pad_id, train.pair, len(train), len(test), source,
        difficulty, tuple(int(c) for c in counts), data_records(files),
    )  # fmt: skip


def _check_token_memory(task: str, sequences: int, max_len: int, itemsize: int) -> None:
    """Refuse, before generating or encoding anything, token arrays that would not fit in memory: the
    allocation fails only after minutes of generation (or the machine starts swapping)."""
    from mirrorla.memory import available_memory_bytes, format_bytes

    needed = sequences * max_len * itemsize
    available = available_memory_bytes("cpu")
    if available is not None and needed > available // 2:
        raise ValueError(
            f"{task}: {sequences:,} sequences of {max_len:,} tokens need {format_bytes(needed)} of memory for the "
            f"tokens alone, more than half of the {format_bytes(available)} available; lower the number of "
            "sequences (--train-subset, --eval-subset) or --max-len (LRA: listops 2,000, text 4,096, retrieval 4,000)"
        )


def _check_generation_time(task: str, sequences: int, per_second: float) -> None:
    """Say how long generating takes when it is long, and refuse what would take more than a day (a
    ``--train-subset`` typo should not look like a hang)."""
    import sys

    seconds = sequences / per_second
    if seconds > _LONGEST_GENERATION_S:
        raise ValueError(
            f"{task}: generating {sequences:,} sequences would take about {seconds / 3600:,.0f} hours (about "
            f"{per_second:,.0f} a second on one CPU core); lower --train-subset / --eval-subset (LRA: 96,000 / 2,000)"
        )
    if seconds > 60:
        print(f"{task}: generating {sequences:,} sequences, about {seconds / 60:.0f} min (cached for the next run)",
              file=sys.stderr, flush=True)  # fmt: skip


def _generated_listops(cache_dir, train_size, eval_size, seed, max_len):
    params = dict(_LISTOPS, seed=seed)
    params["train"], params["eval"] = train_size or params["train"], eval_size or params["eval"]
    params["max_len"] = max_len or params["max_len"]
    if params["max_len"] < params["min_len"]:
        raise ValueError(
            f"max_len {params['max_len']} is below the shortest generated ListOps expression ({params['min_len']} "
            f"tokens); pass max_len >= {params['min_len']} (LRA: 2000), or read shorter TSV data with data_dir"
        )
    _check_token_memory("listops", params["train"] + params["eval"], params["max_len"], 1)
    _check_generation_time("listops", params["train"] + params["eval"], _LISTOPS_PER_SECOND)
    gen = {k: params[k] for k in ("min_len", "max_len", "max_depth", "max_args")}

    def generate(split: str) -> dict[str, np.ndarray]:
        tokens, labels = generate_listops(params[split], seed, stream=_STREAMS[split], **gen)
        ids, lengths = encode_listops(tokens, params["max_len"])
        return {"tokens": ids, "labels": np.asarray(labels, dtype=np.int64), "lengths": lengths}

    folder = cache_folder(lra_cache_dir(cache_dir), "listops", params)
    splits, files = cached_splits(folder, params, generate)
    train, test = _dataset(splits["train"]), _dataset(splits["eval"])
    return train, test, _info(
        "listops", train, test, num_classes=10, vocab_size=len(LISTOPS_VOCAB), max_len=params["max_len"],
        grid=None, pad_id=0, source="generated", difficulty=None, files=files,
    )  # fmt: skip


def _fixed_len(task: str, max_len: int | None, fixed: int) -> None:
    if max_len is not None and max_len != fixed:
        raise ValueError(f"{task} sequences always have {fixed} tokens; pass max_len=None or {fixed}, not {max_len}")


def _generated_pathfinder(task, cache_dir, train_size, eval_size, seed, max_len, difficulty):
    preset = pathfinder_preset(int(task.removeprefix("pathfinder")), difficulty)
    _fixed_len(task, max_len, preset.size**2)
    sequences = (train_size or _PATHFINDER_SIZES["train"]) + (eval_size or _PATHFINDER_SIZES["eval"])
    _check_token_memory(task, sequences, preset.size**2, 1)
    _check_generation_time(task, sequences, _PATHFINDER_PER_SECOND * 32 / preset.size)
    params = {
        "difficulty": difficulty, "dashes": preset.dashes,
        "distractors": f"{preset.distractors}x{preset.distractor_dashes}", "dash": preset.dash,
        "gap": preset.gap, "dot": preset.dot_radius, "turn": round(math.degrees(preset.max_turn)), "seed": seed,
        "train": train_size or _PATHFINDER_SIZES["train"], "eval": eval_size or _PATHFINDER_SIZES["eval"],
    }  # fmt: skip

    def generate(split: str) -> dict[str, np.ndarray]:
        images, labels = generate_pathfinder(
            params[split], seed, size=preset.size, difficulty=difficulty, stream=_STREAMS[split]
        )
        n = len(labels)
        lengths = np.full(n, preset.size**2, dtype=np.int64)
        return {"tokens": images.reshape(n, -1), "labels": labels, "lengths": lengths}

    folder = cache_folder(lra_cache_dir(cache_dir), task, params)
    splits, files = cached_splits(folder, params, generate)
    train, test = _dataset(splits["train"]), _dataset(splits["eval"])
    return train, test, _info(
        task, train, test, num_classes=2, vocab_size=256, max_len=preset.size**2, grid=(preset.size, preset.size),
        pad_id=None, source="generated", difficulty=difficulty, files=files,
    )  # fmt: skip


def _image(data_dir, train_size, eval_size, max_len):
    _fixed_len("image", max_len, 1024)
    splits = {}
    for split, limit, option in (("train", train_size, "train_size"), ("test", eval_size, "eval_size")):
        tokens, labels, files = fashion_mnist_sequences(split, data_dir)
        lengths = np.full(len(labels), tokens.shape[1], dtype=np.int64)
        arrays = {"tokens": tokens, "labels": labels, "lengths": lengths}
        splits[split] = _first(arrays, limit, option, f"the Fashion-MNIST {split} split")
    train, test = _dataset(splits["train"]), _dataset(splits["test"])
    return train, test, _info(
        "image", train, test, num_classes=10, vocab_size=256, max_len=1024, grid=(32, 32), pad_id=None,
        source="fashion_mnist", difficulty=None, files=list(files.values()),
    )  # fmt: skip


def _from_tsv(task, data_dir, train_size, eval_size, max_len):
    if data_dir is None:
        names = " and ".join(tsv.TSV_FILES[task].values())
        raise ValueError(
            f"LRA task {task!r} reads {names} from data_dir, which was not given. IMDB and AAN cannot be "
            f"obtained offline by this library: see mirrorla.data.lra.tsv for the file layout"
        )
    paths = tsv.tsv_files(task, data_dir)
    default_len = {"listops": _LISTOPS["max_len"], "text": _TEXT_MAX_LEN, "retrieval": _RETRIEVAL_MAX_LEN}[task]
    length = max_len or default_len
    splits = {}
    for split, limit in (("train", train_size), ("eval", eval_size)):
        arrays = _read_tsv(task, paths[split], length)
        splits[split] = _first(arrays, limit, f"{split}_size", str(paths[split]))
    train, test = _dataset(splits["train"]), _dataset(splits["eval"])
    if task == "listops":
        num_classes, vocab_size = 10, len(LISTOPS_VOCAB)
    else:
        top = max((int(a["labels"].max()) for a in splits.values() if len(a["labels"])), default=0)
        num_classes, vocab_size = max(2, top + 1), 257
    return train, test, _info(
        task, train, test, num_classes=num_classes, vocab_size=vocab_size, max_len=length, grid=None, pad_id=0,
        source="tsv", difficulty=None, files=list(paths.values()),
    )  # fmt: skip


def _read_tsv(task: str, path: Path, max_len: int) -> dict[str, np.ndarray]:
    if task == "listops":
        tokens, labels = tsv.read_listops_tsv(path)
        _check_token_memory(f"listops ({path})", len(tokens), max_len, 1)
        ids, lengths = encode_listops(tokens, max_len)
    elif task == "text":
        texts, labels = tsv.read_text_tsv(path)
        _check_token_memory(f"text ({path})", len(texts), max_len, 2)
        ids, lengths = tsv.encode_bytes(texts, max_len)
    else:
        pairs, labels = tsv.read_retrieval_tsv(path)
        _check_token_memory(f"retrieval ({path})", 2 * len(pairs), max_len, 2)
        first, len1 = tsv.encode_bytes([a for a, _ in pairs], max_len)
        second, len2 = tsv.encode_bytes([b for _, b in pairs], max_len)
        ids, lengths = np.stack([first, second], axis=1), np.stack([len1, len2], axis=1)
    return {"tokens": ids, "labels": np.asarray(labels, dtype=np.int64), "lengths": lengths}
