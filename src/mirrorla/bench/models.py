"""Cases of ``mirrorla bench models``: whole-model inference throughput against input resolution.

A model spec is a timm model name, optionally followed by ``:<attention>``:

- ``vit_small_patch16_224``: timm's ViT-S/16 with its own softmax attention;
- ``vit_small_patch16_224:mirror``: the same model with its attentions replaced by ``'mirror'``
  (:func:`mirrorla.models.create_model`; any registry name works after the colon);
- ``pvt_small_mirror``: the pyramid backbone of :mod:`mirrorla.models` (when it is installed).

Every model is built for each resolution with ``img_size=R`` (random weights) and timed in eval
mode under ``no_grad``: images/s = batch / median forward time (the Swin/DeiT protocol).
"""

from __future__ import annotations

import torch

from mirrorla.bench.ops import OpsCase
from mirrorla.models.flops import count_run_macs, unfused_attention

__all__ = ["default_model_specs", "plan_model_cases", "build_model_case", "DEFAULT_RESOLUTIONS", "QUICK_RESOLUTIONS"]

DEFAULT_RESOLUTIONS = (224, 384, 512, 768, 1024, 1536, 2048)
QUICK_RESOLUTIONS = (224, 320)
VIT = "vit_small_patch16_224"  # C = 384, 6 heads: the width of the ops sweep


def default_model_specs(attention: str = "mirror") -> list[str]:
    """Softmax ViT-S, the same ViT with ``attention``, and the pyramid backbone when it exists."""
    specs = [VIT, f"{VIT}:{attention}"]
    try:
        import timm

        import mirrorla.models  # noqa: F401  (registers the pyramid names with timm)

        pyramid = f"pvt_small_{attention}"
        if pyramid in timm.list_models(pyramid):
            specs.append(pyramid)
    except ImportError:
        pass
    return specs


def plan_model_cases(specs: list[str], resolutions: list[int]) -> list[list[dict]]:
    """One worker group per model, resolutions ascending."""
    return [[{"kind": "model", "method": spec, "N": r} for r in sorted(set(resolutions))] for spec in specs]


def _create(spec: str, resolution: int) -> torch.nn.Module:
    from mirrorla.models import create_model

    name, _, attention = spec.partition(":")
    return create_model(name, attention=attention or None, img_size=resolution)


def build_model_case(case: dict, s: dict) -> OpsCase:
    """Inference forward of model ``case['method']`` at resolution ``case['N']``; MACs per image."""
    R, B = int(case["N"]), int(s["batch"])
    device, dtype = torch.device(s["device"]), getattr(torch, s["dtype"])
    model = _create(case["method"], R).to(device, dtype).eval()
    x = torch.randn(B, 3, R, R, device=device, dtype=dtype)

    def fwd():
        with torch.no_grad():
            model(x)

    def fake():
        with unfused_attention(model):
            model(torch.empty(1, 3, R, R, device=device, dtype=dtype))

    try:
        macs = count_run_macs(fake, fake=True)[0]
    except Exception:
        macs = None
    return OpsCase(fwd, None, macs)
