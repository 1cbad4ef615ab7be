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

import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


class _Resumable:
    """Step-level checkpoints of one stage: the trainable tensors, the optimiser, the step and the losses.

    The batch order is a function of the seed alone (``_batches``), so a resumed run skips the batches
    the finished steps consumed and continues with the same ones an uninterrupted run would see: kill
    and resume ends with the same weights (on the same machine and thread count). The file is written
    through the atomic writer (temporary file, fsync, rename), so a kill never leaves a torn checkpoint.
    """

    def __init__(self, path, every: int, stage: str, steps: int):
        self.path = None if path is None else Path(path)
        self.every = every
        self.stage = stage
        self.steps = steps

    def load(self, params: dict[str, Tensor], optimizer) -> tuple[int, list[float]]:
        if self.path is None or not self.path.is_file():
            return 0, []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a checkpoint written by something else, or damaged outside the writer
            raise ValueError(
                f"{self.path} is not a readable STILL training checkpoint ({err}); delete it to restart"
            ) from None
        if state.get("stage") != self.stage or state.get("steps") != self.steps or set(state["params"]) != set(params):
            raise ValueError(
                f"{self.path} belongs to another run (stage {state.get('stage')!r}, {state.get('steps')} steps; this "
                f"run: {self.stage!r}, {self.steps} steps); delete it or use another checkpoint path"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), list(state["losses"])

    def save(self, step: int, losses: list[float], params: dict[str, Tensor], optimizer) -> None:
        if self.path is None or (step % self.every and step != self.steps):
            return
        from mirrorla.engine.checkpoint import atomic_write_bytes

        state = {
            "stage": self.stage,
            "steps": self.steps,
            "step": step,
            "losses": losses,
            "params": {name: p.detach().cpu().clone() for name, p in params.items()},
            "optimizer": optimizer.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())


def _train_loop(
    stage: str,
    steps: int,
    named_params: dict[str, Tensor],
    optimizer,
    batches,
    micro_loss,
    config: LinearizeConfig,
    progress: bool,
    checkpoint,
    checkpoint_every: int,
    on_step,
) -> list[float]:
    """Run ``steps`` optimiser steps of ``micro_loss(batch) -> (loss to backprop, loss to log)``, resumably."""
    saver = _Resumable(checkpoint, checkpoint_every, stage, steps)
    done, losses = saver.load(named_params, optimizer)
    for _ in range(done * config.grad_accum):  # the batches the finished steps used
        next(batches)
    start = time.perf_counter()
    with _progress(steps, stage, progress) as bar:
        bar.update(done)
        for step in range(done, steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(config.grad_accum):
                loss, logged = micro_loss(next(batches))
                (loss / config.grad_accum).backward()
                total += logged / config.grad_accum
            optimizer.step()
            losses.append(total)
            saver.save(step + 1, losses, named_params, optimizer)
            bar.set_postfix(loss=f"{total:.4g}")
            bar.update()
            if on_step is not None:
                elapsed = time.perf_counter() - start
                eta = elapsed / (step + 1 - done) * (steps - step - 1)
                on_step(
                    {
                        "stage": stage,
                        "step": step + 1,
                        "steps": steps,
                        "loss": total,
                        "elapsed_s": elapsed,
                        "eta_s": eta,
                    }
                )
    return losses


def attention_transfer(
    model: nn.Module,
    blocks: Tensor,
    config: LinearizeConfig,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1,
    on_step=None,
) -> list[float]:
    """Stage 1. Trains NP-Maps and g_proj in place; returns the loss of every optimiser step.

    ``checkpoint``: a file written every ``checkpoint_every`` steps and at the end; when it exists the
    stage resumes from it (same result as an uninterrupted run). ``on_step(info)`` is called after every
    optimiser step with the stage, step, steps, loss, elapsed seconds and an ETA in seconds.
    """
    layers = still_layers(model)
    if not layers:
        raise ValueError("the model has no STILL layers; call mirrorla.still.linearize(model) first")
    steps = config.steps(1, len(blocks))
    if steps == 0:
        return []
    for p in model.parameters():
        p.requires_grad_(False)
    named = {}
    for i, layer in enumerate(layers):
        for part in ("feature_map_q", "feature_map_k", "g_proj"):
            for name, p in getattr(layer, part).named_parameters():
                p.requires_grad_(True)
                named[f"{i}.{part}.{name}"] = p
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.stage1_lr, weight_decay=0.0)
    batches = _batches(blocks, config.batch_size, torch.Generator().manual_seed(config.seed))
    backbone = getattr(model, "model", model)  # the decoder without lm_head: stage 1 needs no logits
    device = _device(model)

    def micro_loss(batch):
        backbone(input_ids=batch.to(device), use_cache=False)
        loss = torch.stack([layer.transfer_loss for layer in layers]).mean()
        return loss * config.transfer_loss_scale, loss.item()

    was_training = model.training
    model.train()
    set_attention_transfer(model, True)
    try:
        return _train_loop(
            "stage 1: attention transfer",
            steps,
            named,
            optimizer,
            batches,
            micro_loss,
            config,
            progress,
            checkpoint,
            checkpoint_every,
            on_step,
        )
    finally:
        set_attention_transfer(model, False)
        model.train(was_training)


def lora_finetune(
    model: nn.Module,
    blocks: Tensor,
    config: LinearizeConfig,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1,
    on_step=None,
):
    """Stage 2. Returns ``(model with LoRA merged, per-step losses)``; NP-Maps stay frozen.

    ``checkpoint``, ``checkpoint_every`` and ``on_step`` as in :func:`attention_transfer`.
    """
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
    peft_model = get_peft_model(model, lora)  # a resumed run overwrites the new adapters from its checkpoint
    named = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.stage2_lr, weight_decay=0.0)
    batches = _batches(blocks, config.batch_size, torch.Generator().manual_seed(config.seed + 1))
    device = _device(model)

    def micro_loss(batch):
        ids = batch.to(device)
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        return loss, loss.item()

    peft_model.train()
    losses = _train_loop(
        "stage 2: LoRA",
        steps,
        named,
        optimizer,
        batches,
        micro_loss,
        config,
        progress,
        checkpoint,
        checkpoint_every,
        on_step,
    )
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
