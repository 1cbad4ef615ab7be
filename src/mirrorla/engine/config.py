"""The training configuration: frozen, validated dataclasses shared by the CLI, the engine and compare.

This module imports neither torch nor timm: the command line reads its defaults to build ``--help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASE",
    "DEFAULT_ATTENTIONS",
    "SR_BASE",
    "SR_DEFAULT_ATTENTIONS",
    "SR_PRESETS",
    "PRESETS",
    "RESULT_FIELDS",
    "ADDED_FIELD_DEFAULTS",
    "saved_field",
    "CompareConfig",
    "TrainConfig",
    "TASKS",
    "LRA_BASE",
    "LRA_PRESETS",
    "LRA_TASK_BUDGETS",
    "LRA_DEFAULT_ATTENTIONS",
    "LRA_DEFAULT_TASKS",
    "check_subset_sizes",
    "describe_preset",
    "QUICK_NOTES",
    "quick_note",
]

#: Fields that change what a run computes; a resumed run must agree on all of them.
RESULT_FIELDS = (
    "dataset", "train_subset", "eval_subset", "image_size", "augment", "model", "attention", "attention_kwargs",
    "embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "drop_path", "batch_size", "lr", "min_lr",
    "warmup_lr", "warmup_epochs", "weight_decay", "label_smoothing", "mixup", "cutmix", "mixup_switch_prob",
    "ema_decay", "clip_grad", "amp", "seed", "task", "scale", "degradation", "eval_data_dir",
    "layout", "difficulty", "max_len", "data_seed",
)  # fmt: skip

#: Result fields added after runs were first recorded, with the value every earlier run had: a saved
#: configuration without the key is compared as if it held this value.
ADDED_FIELD_DEFAULTS: dict[str, Any] = {
    "task": "classification", "scale": 2, "degradation": "matlab", "eval_data_dir": None,
    "layout": "1d", "difficulty": "medium", "max_len": None, "data_seed": 0,
}  # fmt: skip

#: The tasks of :func:`mirrorla.tasks.list_tasks` (this module imports no torch, so they are listed here too;
#: tests/test_lra.py checks the two agree).
TASKS = ("classification", "super_resolution", "long_range")


def saved_field(saved: dict[str, Any], name: str) -> Any:
    """A result field of a saved configuration (``config.json``, ``result.json``), where a field added
    later is read as its :data:`ADDED_FIELD_DEFAULTS` value."""
    return saved.get(name, ADDED_FIELD_DEFAULTS.get(name))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults suit a small ViT on Fashion-MNIST on a CPU.

    The recipe is the AdamW + warmup + cosine family of the FLatten/PolaFormer/DeiT code bases
    (docs/methods.md §8.4) with a short schedule; ``lr`` is per run, not scaled by batch size.
    """

    #: What is trained (:func:`mirrorla.tasks.list_tasks`): ``classification``, ``super_resolution`` or
    #: ``long_range`` (the LRA-style sequence tasks; ``dataset`` names the task, e.g. ``listops``).
    task: str = "classification"
    # data
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = True
    train_subset: int | None = None
    eval_subset: int | None = None
    image_size: int | None = None
    augment: bool = True
    workers: int = 0
    #: Super-resolution: the upscaling factor and how LR images are made from HR ones
    #: (:data:`mirrorla.data.sr.DOWNSAMPLE_METHODS`). Classification ignores them.
    scale: int = 2
    degradation: str = "matlab"
    #: Super-resolution with ``dataset="folder"``: a separate folder of HR test images (e.g. Set5), scored
    #: after every epoch and, whole, after training. Without it the training folder is scored (a fit, not a test).
    eval_data_dir: str | None = None
    #: Long-range tasks (:mod:`mirrorla.data.lra`): ``layout`` ``"1d"`` (the tokens as one sequence, grid
    #: (1, L)) or ``"2d"`` (image tasks: the pixel grid); Pathfinder's ``difficulty``; the ``max_len`` of
    #: ListOps/text/retrieval sequences (None: the task's default); ``data_seed``: the seed of the generated
    #: data (the same data for every training seed).
    layout: str = "1d"
    difficulty: str = "medium"
    max_len: int | None = None
    data_seed: int = 0
    # model
    model: str = "vit"
    attention: str | None = "mirror"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 2
    patch_size: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_switch_prob: float = 0.5
    ema_decay: float = 0.0
    clip_grad: float | None = 1.0
    amp: str = "none"
    seed: int = 0
    # run
    device: str = "auto"
    threads: int | None = None
    out_dir: str | None = None
    save_checkpoints: bool = True
    keep_checkpoints: int = 2
    resume: str | None = None
    #: A new run into a folder that already holds files deletes the previous run's outputs instead of refusing.
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "embed_dim", "depth", "num_heads", "patch_size", "keep_checkpoints")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.layout not in ("1d", "2d"):
            raise ValueError(f"layout must be '1d' (one token sequence) or '2d' (the pixel grid), got {self.layout!r}")
        if self.difficulty not in ("easy", "medium", "hard"):
            raise ValueError(f"difficulty must be 'easy', 'medium' or 'hard', got {self.difficulty!r}")
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len <= 0):
            raise ValueError(f"max_len must be a positive integer or None (the task's default), got {self.max_len!r}")
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale!r}")
        if self.degradation not in ("matlab", "torch"):
            raise ValueError(f"degradation must be 'matlab' or 'torch', got {self.degradation!r}")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay", "warmup_epochs", "mixup", "cutmix", "drop_path"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")
        if not 0 <= self.mixup_switch_prob <= 1:
            raise ValueError(f"mixup_switch_prob must be in [0, 1], got {self.mixup_switch_prob}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or None (no clipping), got {self.clip_grad}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(
                f"Mixup/CutMix mix a batch with its flip and need an even batch_size, got {self.batch_size}"
            )
        for name in ("train_subset", "eval_subset", "image_size", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not isinstance(self.attention_kwargs, dict):
            raise TypeError(f"attention_kwargs must be a dict, got {type(self.attention_kwargs).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise (they would otherwise be silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def result_key(self) -> dict[str, Any]:
        """The fields that determine the run's numbers (see :data:`RESULT_FIELDS`)."""
        d = self.to_dict()
        return {k: d[k] for k in RESULT_FIELDS}


def check_subset_sizes(cfg: TrainConfig, train_size: int, eval_size: int) -> None:
    """Raise ``ValueError`` when a subset asks for more images than the split holds.

    ``train_size``/``eval_size`` are the sizes of the splits built for ``cfg`` (a subset larger than its
    split yields the whole split): a run records the subset it was asked for, so it must be the one used.
    """
    splits = (("train_subset", cfg.train_subset, train_size), ("eval_subset", cfg.eval_subset, eval_size))
    for option, asked, size in splits:
        if asked is not None and asked > size:
            split = "training" if option == "train_subset" else "evaluation"
            raise ValueError(
                f"--{option.replace('_', '-')} {asked} is larger than {cfg.dataset}'s {split} split ({size} images): "
                f"pass at most {size}, or leave it out to use all of it"
            )


#: Softmax, ReLU linear attention, the peer methods, MirrorLA and its ablation rows (docs/methods.md §2.8).
DEFAULT_ATTENTIONS = (
    "softmax", "linear_relu", "flatten", "pola", "nala", "l2vit_lga",
    "mirror", "mirror_block", "mirror_block_var", "mirror_cross",
)  # fmt: skip

#: Budgets of ``mirrorla compare``. ``quick`` ≈ 5 minutes on 2 CPU cores; ``default`` took 187 minutes of
#: 1-thread run time for the ten default attentions on a 2-core VM (docs/training.md: timings and how to
#: split it into shards). Model: ViT, patch 4 on 28×28 → 49 tokens + cls. ``None`` subsets: all images.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(seeds=(0,), epochs=3, train_subset=5000, eval_subset=2000),
    "default": dict(seeds=(0, 1, 2), epochs=3, train_subset=None, eval_subset=None),
}
#: What every run of a comparison shares, the attention and the seed aside.
BASE = TrainConfig(
    embed_dim=64, depth=4, num_heads=2, patch_size=4, mlp_ratio=2.0, batch_size=128, lr=1e-3, warmup_epochs=0.5,
    label_smoothing=0.1, clip_grad=1.0, save_checkpoints=True, keep_checkpoints=1, progress=False,
)  # fmt: skip


#: ``mirrorla sr compare``'s default set: softmax, ReLU linear attention, the peers, MirrorLA and its
#: depthwise-conv form.
SR_DEFAULT_ATTENTIONS = ("softmax", "linear_relu", "flatten", "pola", "nala", "l2vit_lga", "mirror", "mirror_dwc")
#: What every super-resolution run shares by default (``mirrorla sr train`` and ``sr compare``): the tiny SR
#: network at ×2 on the built-in photos, 24² LR patches (576 tokens), batch 16, AdamW 3e-3 with a short warm-up
#: and cosine, L1 loss. ``train_subset`` is the number of training patches per epoch.
SR_BASE = TrainConfig(
    task="super_resolution", dataset="photos", model="sr_tiny", attention="mirror", scale=2, image_size=24,
    train_subset=1600, epochs=6, batch_size=16, lr=3e-3, min_lr=1e-5, warmup_epochs=0.3, weight_decay=1e-4,
    label_smoothing=0.0, clip_grad=None, save_checkpoints=True, keep_checkpoints=1,
)  # fmt: skip
#: Budgets of ``mirrorla sr compare`` (docs/results/super-resolution.md has their run times).
SR_PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(seeds=(0,), epochs=1, train_subset=320),
    "default": dict(seeds=(0, 1, 2), epochs=6, train_subset=1600),
}


#: ``mirrorla lra compare``'s default set: softmax, ReLU linear attention, the peers, MirrorLA and its ablation rows.
LRA_DEFAULT_ATTENTIONS = DEFAULT_ATTENTIONS
#: The tasks ``mirrorla lra compare`` runs by default (the ones generated or read offline).
LRA_DEFAULT_TASKS = ("listops", "pathfinder32", "image")
#: What every long-range run shares by default (``mirrorla lra train`` and ``lra compare``): the tiny sequence
#: model (width 32, 2 layers, 2 heads), batch 32, AdamW 1e-3 with a short warm-up and cosine, no label smoothing.
LRA_BASE = TrainConfig(
    task="long_range", dataset="listops", model="seq_tiny", attention="mirror", batch_size=32, lr=1e-3,
    min_lr=1e-5, warmup_epochs=0.3, weight_decay=0.01, label_smoothing=0.0, clip_grad=1.0, epochs=3,
    save_checkpoints=True, keep_checkpoints=1,
)  # fmt: skip
#: Seeds of the ``mirrorla lra compare`` presets.
LRA_PRESETS: dict[str, dict[str, Any]] = {"quick": dict(seeds=(0,)), "default": dict(seeds=(0,))}
#: Per-task budgets of the presets (training/evaluation examples and epochs). ``default`` is what
#: docs/results/long-range.md ran on a 2-core CPU (≈ 90 minutes for the ten default attentions on the three
#: default tasks, one seed); ``quick`` is a smoke test of minutes. Tasks not listed use their ``default`` entry
#: or, failing that, the whole data for 3 epochs.
LRA_TASK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "listops": dict(train_subset=96, eval_subset=64, epochs=1, max_len=600),
        "pathfinder32": dict(train_subset=128, eval_subset=64, epochs=1),
        "image": dict(train_subset=128, eval_subset=64, epochs=1),
    },
    "default": {
        "listops": dict(train_subset=2000, eval_subset=500, epochs=3),
        "pathfinder32": dict(train_subset=2400, eval_subset=600, epochs=3),
        "pathfinder64": dict(train_subset=1200, eval_subset=300, epochs=3),
        "pathfinder128": dict(train_subset=600, eval_subset=150, epochs=3),
        "image": dict(train_subset=2400, eval_subset=600, epochs=3),
    },
}


#: Printed beside the table of a ``--quick`` run (and written into its results.md): the quick presets are smoke
#: runs of minutes on a CPU that show every step working; their numbers, and the order of the attentions, are
#: not the result. Each note says what the full preset shows and where it is published.
QUICK_NOTES: dict[str, str] = {
    "compare": (
        "Quick preset: a smoke run (1 seed, 3 epochs on 5,000 of the 60,000 training images), not a result; "
        "its accuracies (roughly 40-60 %) and their order say little. The full preset (`mirrorla compare`: "
        "all images, seeds 0-2, about 2 hours on 2 cores) reaches 77-84 %, with PolaFormer, FLatten and "
        "NaLaFormer ahead, the MirrorLA rows level with ReLU linear attention and softmax last: "
        "docs/results/fashion-mnist.md."
    ),
    "sr compare": (
        "Quick preset: a smoke run (1 seed, 1 epoch of 320 patches), not a result; most attentions do not "
        "yet beat bicubic. The full preset (`mirrorla sr compare`: 6 epochs of 1,600 patches, seeds 0-2, about "
        "1 h 40 min on 2 cores) puts every attention 1.1-1.4 dB above bicubic, within 0.25 dB of each "
        "other: docs/results/super-resolution.md."
    ),
    "lra compare": (
        "Quick preset: a smoke run (about 100 training sequences per task, 1 epoch), not a result; every "
        "attention stays near the majority class. The full preset (`mirrorla lra compare`, about 90 minutes "
        "on 2 cores) separates the attentions mainly on the image task, where the MirrorLA rows and PolaFormer lead "
        "and softmax and L2ViT's LGA trail: docs/results/long-range.md."
    ),
    "bench": (
        "Quick preset: a smoke run at small sizes only, not a result; the targets are set at sizes it does "
        "not time. The full sweeps and the targets: docs/results/efficiency.md."
    ),
}


def quick_note(job: str, preset: str) -> str:
    """The :data:`QUICK_NOTES` line of ``job`` for the ``quick`` preset, else ``""``."""
    return QUICK_NOTES[job] if preset == "quick" else ""


def describe_preset(name: str, presets: dict[str, dict[str, Any]] | None = None) -> str:
    """A preset in words, e.g. '1 seed (0), 3 epochs, 5000 training and 2000 evaluation images'."""
    p = (presets or PRESETS)[name]
    seeds = ", ".join(str(s) for s in p["seeds"])
    images = lambda n: "all" if n is None else str(n)  # noqa: E731
    if "eval_subset" not in p:  # super-resolution: patches per epoch
        return (
            f"{len(p['seeds'])} seed{'s' if len(p['seeds']) > 1 else ''} ({seeds}), {p['epochs']} epoch"
            f"{'s' if p['epochs'] > 1 else ''} of {p['train_subset']} patches"
        )
    return (
        f"{len(p['seeds'])} seed{'s' if len(p['seeds']) > 1 else ''} ({seeds}), {p['epochs']} epochs, "
        f"{images(p['train_subset'])} training and {images(p['eval_subset'])} evaluation images"
    )


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: ``base`` fixes everything but the attention and the seed."""

    attentions: tuple[str, ...] = DEFAULT_ATTENTIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    base: TrainConfig = field(default_factory=lambda: BASE)
    out_dir: str = "runs/compare"
    resume: bool = False
    #: Without ``resume``: use an ``out_dir`` that holds files and retrain every run. With ``resume``:
    #: also retrain finished runs whose settings differ (otherwise the job stops before training).
    overwrite: bool = False
    throughput_batch: int = 128
    throughput_warmup: int = 5
    throughput_iters: int = 10
    throughput_rounds: int = 5
    preset: str = "custom"
    #: Training runs at once, each a process with ``base.threads`` (default: cores // jobs) threads.
    #: ``None`` = one per CPU core on a CPU, 1 on CUDA.
    jobs: int | None = 1
    #: One progress bar over all runs of the job (on stderr).
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.attentions:
            raise ValueError("attentions must name at least one registered attention")
        if len(set(self.attentions)) != len(self.attentions):
            raise ValueError(f"attentions contains duplicates: {self.attentions}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not all(isinstance(s, int) for s in self.seeds):
            raise TypeError(f"seeds must be integers, got {self.seeds}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"jobs must be a positive int or None (one per CPU core), got {self.jobs!r}")
        for name in ("throughput_batch", "throughput_warmup", "throughput_iters", "throughput_rounds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
