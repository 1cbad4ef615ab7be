"""Tasks: the registry and the classification task's loss and metric sums."""

from __future__ import annotations

import pytest
import torch

from mirrorla.engine import TrainConfig
from mirrorla.tasks import ClassificationTask, create_task, list_tasks, register_task


def test_registry():
    assert "classification" in list_tasks()
    assert isinstance(create_task("classification"), ClassificationTask)
    with pytest.raises(ValueError, match="unknown task 'nope'; valid names: .*classification"):
        create_task("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("Again", (), {"name": "classification"}))


def test_classification_sums():
    task = create_task("classification")
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    y = torch.tensor([0, 2, 2, 1])
    assert task.batch_sums(logits, y) == {"top1": 200.0}  # rows 0 and 2 right
    sums = task.eval_sums(logits, y)
    assert sums["top1"] == 200.0 and sums["top5"] == 400.0  # 3 classes: top-5 is everything
    assert sums["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())


def test_classification_loss_and_model():
    task = create_task("classification")
    from mirrorla.data.datasets import DatasetInfo

    info = DatasetInfo("synthetic", 10, 1, 28, (0.5,), (0.3,), 8, 8)
    cfg = TrainConfig(embed_dim=16, depth=1, num_heads=2, patch_size=7, attention="mirror")
    loss, transform = task.build_loss(cfg, info)
    assert transform is None and isinstance(loss, torch.nn.CrossEntropyLoss)
    loss, transform = task.build_loss(cfg.replace(mixup=0.8), info)
    assert transform is not None  # Mixup gives soft targets
    model = task.build_model(cfg, info)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
