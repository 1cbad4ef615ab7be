"""Two-stage STILL training (docs/methods.md §7.7) and perplexity evaluation.

Dimension letters: B batch, N tokens per block.

Stage 1, attention transfer: only the NP-Maps and ``g_proj`` train; every STILL layer also computes the
exact causal softmax attention of the same q, k, v and the loss is the mean over layers of
MSE(STILL, softmax) of the per-head outputs (before W_O), ×1000 (the Liger trainer's factor). The
softmax output is passed on, so each layer learns against the frozen model's hidden states (all layers
in one pass, each with its own loss).

Stage 2, low-rank linearising: LoRA (peft; r = 8, alpha = 16, dropout 0) on q/k/v/o/g projections with
the next-token loss; the NP-Maps stay frozen. The adapters are merged at the end, so the result is a
plain linearized model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from mirrorla.still.hf import set_attention_transfer, still_layers

__all__ = ["LinearizeConfig", "attention_transfer", "lora_finetune", "perplexity"]


@dataclass(frozen=True)
class LinearizeConfig:
    """Budget and optimiser settings of both stages (defaults: LoLCATs/Liger, docs/methods.md §7.7).

    ``stage1_steps``/``stage2_steps`` count optimiser steps of ``batch_size × grad_accum`` blocks;
    ``None`` means 2 epochs over the training blocks. 0 skips the stage.
    """

    batch_size: int = 1
    grad_accum: int = 8
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    stage1_lr: float = 1e-2
    stage2_lr: float = 1e-4
    transfer_loss_scale: float = 1000.0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj", "g_proj"))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError(f"batch_size and grad_accum must be positive, got {self.batch_size}, {self.grad_accum}")
        for name in ("stage1_steps", "stage2_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None (2 epochs), got {value}")
        if self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be positive, got {self.lora_rank}")

    def steps(self, stage: int, n_blocks: int) -> int:
        value = self.stage1_steps if stage == 1 else self.stage2_steps
        if value is None:
            return math.ceil(2 * n_blocks / (self.batch_size * self.grad_accum))
        return value

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(blocks: Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches of blocks (epoch after epoch)."""
    while True:
        order = torch.randperm(len(blocks), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield blocks[order[start : start + batch_size]]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def attention_transfer(model: nn.Module, blocks: Tensor, config: LinearizeConfig, progress: bool = True) -> list[float]:
    """Stage 1. Trains NP-Maps and g_proj in place; returns the loss of every optimiser step."""
    layers = still_layers(model)
    if not layers:
        raise ValueError("the model has no STILL layers; call mirrorla.still.linearize(model) first")
    steps = config.steps(1, len(blocks))
    if steps == 0:
        return []
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in layers:
        for module in (layer.feature_map_q, layer.feature_map_k, layer.g_proj):
            for p in module.parameters():
                p.requires_grad_(True)
                params.append(p)
    optimizer = torch.optim.AdamW(params, lr=config.stage1_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    batches = _batches(blocks, config.batch_size, generator)
    backbone = getattr(model, "model", model)  # the decoder without lm_head: stage 1 needs no logits
    device = _device(model)
    losses = []
    was_training = model.training
    model.train()
    set_attention_transfer(model, True)
    try:
        with _progress(steps, "stage 1: attention transfer", progress) as bar:
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for _ in range(config.grad_accum):
                    backbone(input_ids=next(batches).to(device), use_cache=False)
                    loss = torch.stack([layer.transfer_loss for layer in layers]).mean()
                    (loss * config.transfer_loss_scale / config.grad_accum).backward()
                    total += loss.item() / config.grad_accum
                optimizer.step()
                losses.append(total)
                bar.set_postfix(mse=f"{total:.3e}")
                bar.update()
    finally:
        set_attention_transfer(model, False)
        model.train(was_training)
    return losses


def lora_finetune(model: nn.Module, blocks: Tensor, config: LinearizeConfig, progress: bool = True):
    """Stage 2. Returns ``(model with LoRA merged, per-step losses)``; NP-Maps stay frozen."""
    from peft import LoraConfig, get_peft_model

    still_config = getattr(model, "still_config", None)
    steps = config.steps(2, len(blocks))
    if steps == 0:
        return model, []
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(config.lora_targets),
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.stage2_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + 1)
    batches = _batches(blocks, config.batch_size, generator)
    device = _device(model)
    losses = []
    peft_model.train()
    with _progress(steps, "stage 2: LoRA", progress) as bar:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(config.grad_accum):
                ids = next(batches).to(device)
                loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
                (loss / config.grad_accum).backward()
                total += loss.item() / config.grad_accum
            optimizer.step()
            losses.append(total)
            bar.set_postfix(loss=f"{total:.3f}")
            bar.update()
    merged = peft_model.merge_and_unload()
    merged.still_config = still_config
    merged.eval()
    return merged, losses


@torch.no_grad()
def perplexity(model: nn.Module, blocks: Tensor, batch_size: int = 1, progress: bool = True) -> dict:
    """exp(mean next-token NLL) over every predicted token of ``blocks`` (N−1 per block)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    nll, count = 0.0, 0
    start = time.perf_counter()
    with _progress(len(blocks), "eval", progress) as bar:
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i : i + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            nll += loss.item()
            count += ids[:, 1:].numel()
            bar.update(len(ids))
    model.train(was_training)
    mean = nll / count
    return {"nll": mean, "ppl": math.exp(mean), "tokens": count, "seconds": time.perf_counter() - start}
