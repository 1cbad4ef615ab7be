"""mirrorla: linear attention for vision transformers, and linearizing pretrained transformers."""

__version__ = "0.1.0"

from mirrorla.registry import attention_layer, create_attention, list_attentions, register_attention  # noqa: E402

__all__ = ["__version__", "create_attention", "list_attentions", "register_attention", "attention_layer"]

# Backbones: importing registers the deit_*/pvt_*/l2vit_* names with timm (timm.create_model).
import mirrorla.models  # noqa: E402, F401
from mirrorla.models.convert import convert  # noqa: E402

__all__ += ["convert"]
