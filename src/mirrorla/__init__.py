"""mirrorla: linear attention for vision transformers, and linearizing pretrained transformers.

Importing the package is cheap (no torch): the public names load on first use, so ``mirrorla --help``
answers at once. The timm model names (``deit_*``, ``pvt_*``, ``l2vit_*``) are registered with timm
as soon as both ``mirrorla`` and ``timm`` are imported, in either order: right here if timm is
already loaded, else by a one-shot hook that runs when ``timm`` is first imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

#: Public name → the module that defines it (imported on first access).
_LAZY = {
    "create_attention": "mirrorla.registry",
    "list_attentions": "mirrorla.registry",
    "register_attention": "mirrorla.registry",
    "attention_layer": "mirrorla.registry",
    "convert": "mirrorla.models.convert",
    "create_model": "mirrorla.models.factory",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # mirrorla.models, mirrorla.ops, ...
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds ``timm`` with the regular finders and registers mirrorla's models right after it loads."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module) -> None:
            exec_timm(module)
            importlib.import_module("mirrorla.models")

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


if "timm" in sys.modules:
    importlib.import_module("mirrorla.models")
elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
