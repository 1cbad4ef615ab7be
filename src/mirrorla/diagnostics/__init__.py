"""See inside the attention: per-layer, per-head diagnostics of any model with measurable attention layers.

:func:`analyze_model` measures (:mod:`mirrorla.diagnostics.measures` holds the pure functions),
:func:`write_report` writes JSON, figures and a Markdown summary; ``mirrorla analyze`` is the command.
"""

from mirrorla.diagnostics.analyze import HEAD_MEASURES, PCA_MAPS, AnalyzeConfig, analyze_model
from mirrorla.diagnostics.capture import AttentionCapture, attention_layers, capture_attention

__all__ = [
    "AnalyzeConfig",
    "AttentionCapture",
    "HEAD_MEASURES",
    "PCA_MAPS",
    "analyze_model",
    "attention_layers",
    "capture_attention",
]
