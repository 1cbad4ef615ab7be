"""Long-range sequence classification: the LRA-style tasks, the sequence classifier, cross-entropy, top-1.

The configuration fields it reads (:class:`mirrorla.engine.config.TrainConfig`):

- ``dataset``: the task, one of :data:`mirrorla.data.lra.LRA_TASKS` — ``listops``, ``pathfinder32``,
  ``pathfinder64``, ``pathfinder128`` (generated locally by seed ``data_seed`` and cached), ``image``
  (Fashion-MNIST as a 1,024-pixel sequence), ``text`` and ``retrieval`` (a user's TSV files in ``data_dir``;
  IMDB and AAN cannot be obtained offline); ``listops`` reads LRA's TSV files instead of generating when
  ``data_dir`` is given;
- ``train_subset``/``eval_subset``: the number of training/evaluation examples (None: the task's default);
- ``difficulty`` (Pathfinder), ``max_len`` (ListOps, text, retrieval; None: the task's default);
- ``layout``: ``"1d"`` (every task: the tokens as one sequence, grid (1, L)) or ``"2d"`` (Pathfinder and the
  sequential image only: the pixel grid, a separate variant);
- ``model``: ``seq_tiny``/``seq_small``/``seq_base`` (:mod:`mirrorla.models.sequence`) with ``attention``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mirrorla.models.factory import create_model
from mirrorla.tasks.base import register_task
from mirrorla.tasks.classification import ClassificationTask

__all__ = ["LongRangeTask", "SEQ_MODELS"]

#: The sequence-model names of :func:`mirrorla.models.create_model`.
SEQ_MODELS = ("seq_tiny", "seq_small", "seq_base")


@register_task
class LongRangeTask(ClassificationTask):
    """Token sequences → class; label-smoothed cross-entropy; top-1/top-5 as in classification."""

    name = "long_range"
    metric = "top1"

    def build_datasets(self, cfg: Any):
        from mirrorla.data.lra import LRA_TASKS, build_lra_datasets

        if cfg.dataset not in LRA_TASKS:
            raise ValueError(f"a long-range task is one of {', '.join(LRA_TASKS)}, got --dataset {cfg.dataset!r}")
        datasets = build_lra_datasets(
            cfg.dataset,
            data_dir=cfg.data_dir,
            train_size=cfg.train_subset,
            eval_size=cfg.eval_subset,
            seed=cfg.data_seed,
            max_len=cfg.max_len,
            difficulty=cfg.difficulty,
        )
        if cfg.layout == "2d" and datasets[2].grid is None:
            raise ValueError(
                f"--layout 2d needs an image task (pathfinder32/64/128, image); {cfg.dataset} is a 1-D sequence"
            )
        return datasets

    def build_model(self, cfg: Any, info: Any) -> nn.Module:
        if cfg.model not in SEQ_MODELS:
            raise ValueError(f"long-range tasks train one of {', '.join(SEQ_MODELS)}, got --model {cfg.model!r}")
        if cfg.attention is None:
            raise ValueError("the sequence model needs an attention: pass --attention <name> (`mirrorla list`)")
        return create_model(
            cfg.model,
            attention=cfg.attention,
            attn_kwargs=dict(cfg.attention_kwargs),
            vocab_size=info.vocab_size,
            num_classes=info.num_classes,
            max_len=info.max_len,
            pad_id=info.pad_id,
            grid=info.grid if cfg.layout == "2d" else None,
            pair=info.pair,
        )

    def build_loss(self, cfg: Any, info: Any):
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ValueError("Mixup/CutMix mix images; long-range tasks take --mixup 0 --cutmix 0")
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), None
