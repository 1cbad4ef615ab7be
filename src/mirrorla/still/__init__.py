"""STILL: linearize a pretrained causal LM with intra-layer softmax/linear hybrid attention (docs/methods.md §7).

Core math (no extra dependency): :func:`still_attention`, :func:`still_decode_step`, :class:`NPMap`,
:class:`StillConfig`. Hugging Face integration (needs ``transformers``): :func:`linearize`.
"""

from mirrorla.still.attention import StillState, still_attention, still_decode_step
from mirrorla.still.config import StillConfig
from mirrorla.still.np_map import NPMap, np_map

__all__ = [
    "StillConfig",
    "StillState",
    "NPMap",
    "np_map",
    "still_attention",
    "still_decode_step",
    "linearize",
]


def __getattr__(name: str):
    # transformers is optional: import the integration only when it is asked for.
    if name == "linearize":
        from mirrorla.still.hf import linearize

        return linearize
    raise AttributeError(f"module 'mirrorla.still' has no attribute {name!r}")
