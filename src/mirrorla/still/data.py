"""Language-model data: text files → fixed-length token blocks.

Shapes: blocks are (n_blocks, block_size) int64 token ids, made by tokenizing the whole text once and
cutting it into consecutive, non-overlapping windows (the last partial window is dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["read_texts", "token_blocks"]


def read_texts(path: str | Path) -> list[str]:
    """Read a ``.txt`` file, a ``.jsonl`` file (one ``{"text": ...}`` object a line; alpaca-style
    ``instruction``/``input``/``output`` records are joined), or a folder of such files (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise ValueError(f"no .txt or .jsonl files under {path}")
        return [t for f in files for t in read_texts(f)]
    if not path.is_file():
        raise ValueError(f"data path {path} does not exist; pass a .txt/.jsonl file or a folder of them")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "text" in record:
                texts.append(record["text"])
            elif "instruction" in record:
                parts = (record.get(key) for key in ("instruction", "input", "output"))
                texts.append("\n".join(str(part) for part in parts if part))
            else:
                raise ValueError(f"{path}:{n}: expected a 'text' or 'instruction' field, got keys {sorted(record)}")
        return texts
    return [path.read_text(encoding="utf-8", errors="replace")]


def token_blocks(texts: list[str], tokenizer, block_size: int, max_blocks: int | None = None) -> Tensor:
    """Tokenize ``texts`` (joined by the tokenizer's EOS token when it has one) into (n, block_size) blocks."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_blocks is not None and len(ids) >= (max_blocks + 1) * block_size:
            break
    n = len(ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the data holds {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
