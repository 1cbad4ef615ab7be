"""mirrorla: linear attention for vision transformers, and linearizing pretrained transformers."""

__version__ = "0.1.0"

from mirrorla.registry import attention_layer, create_attention, list_attentions, register_attention  # noqa: E402

__all__ = ["__version__", "create_attention", "list_attentions", "register_attention", "attention_layer"]
