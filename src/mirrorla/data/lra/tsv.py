"""Long Range Arena data the user supplies as TSV files: ListOps, Text (IMDB) and Retrieval (AAN).

IMDB and AAN cannot be obtained offline by this library; put the files into one folder (``data_dir``)
under these names (``eval`` below is the split :func:`~mirrorla.data.lra.build_lra_datasets` evaluates on):

==========  ==================================  ==========================================================
task        files (train, eval)                 one example per line, tab-separated
==========  ==================================  ==========================================================
listops     ``basic_train.tsv``,                header ``Source<TAB>Target``, then expression, label 0…9
            ``basic_test.tsv``                  (LRA's names and layout, ``lra_release/listops-1000/``)
text        ``imdb_train.tsv``,                 ``label<TAB>text``, label an integer (IMDB: 0 negative,
            ``imdb_test.tsv``                   1 positive); an optional first header line (our names: LRA
                                                reads IMDB from TensorFlow Datasets, not from files)
retrieval   ``new_aan_pairs.train.tsv``,        ``label<TAB>id1<TAB>id2<TAB>text1<TAB>text2``, no header,
            ``new_aan_pairs.test.tsv``          label 0/1 (may be written ``1.0``) as in LRA's
                                                ``lra_release/tsv_data/`` with the AAN texts filled in
==========  ==================================  ==========================================================

The validation files ``basic_val.tsv`` and ``new_aan_pairs.eval.tsv`` are not read. Layouts follow
LRA's readers: ``lra_benchmarks/listops/input_pipeline.py`` (columns ``Source``/``Target``, header) and
``lra_benchmarks/matching/input_pipeline.py`` (five columns, no header, no quoting). Fields are split
on tabs without quote handling; a text must not contain a newline.

ListOps sources written by LRA's generator (``lra_benchmarks/data/listops.py``) also hold ``(`` and
``)`` grouping tokens, which carry no information beyond the brackets; :func:`read_listops_tsv` drops
them. Text and documents are tokenised per byte as LRA's ``ByteTextEncoder`` does: id = byte + 1, 0 is
padding (vocabulary 257), truncated to ``max_len`` bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mirrorla.data.lra.listops import LISTOPS_VOCAB

__all__ = [
    "TSV_FILES",
    "encode_bytes",
    "read_listops_tsv",
    "read_retrieval_tsv",
    "read_text_tsv",
    "tsv_files",
]

#: task → split → file name; "eval" is the split evaluated on (LRA's test split).
TSV_FILES = {
    "listops": {"train": "basic_train.tsv", "eval": "basic_test.tsv"},
    "text": {"train": "imdb_train.tsv", "eval": "imdb_test.tsv"},
    "retrieval": {"train": "new_aan_pairs.train.tsv", "eval": "new_aan_pairs.test.tsv"},
}
_LAYOUTS = {
    "listops": "a header line 'Source<TAB>Target', then '<expression><TAB><label 0-9>' per line",
    "text": "'<label><TAB><text>' per line, label an integer, optionally a header line first",
    "retrieval": "'<label><TAB><id1><TAB><id2><TAB><text1><TAB><text2>' per line, no header, label 0 or 1",
}
_SOURCES = {
    "listops": "LRA's release (lra_release/listops-1000/), or leave data_dir out to generate ListOps",
    "text": "the IMDB reviews (ai.stanford.edu/~amaas/data/sentiment/), written as TSV",
    "retrieval": "LRA's pair ids (lra_release/tsv_data/) with the texts of the ACL Anthology Network (aan.how)",
}


def tsv_files(task: str, data_dir: str | os.PathLike) -> dict[str, Path]:
    """The train and eval files of ``task`` in ``data_dir``; ValueError saying what is expected if absent."""
    names = TSV_FILES[task]
    root = Path(data_dir)
    paths = {split: root / name for split, name in names.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        offline = (
            "IMDB and AAN cannot be obtained offline by this library. "
            if task != "listops"
            else "ListOps is read from TSV files when data_dir is given. "
        )
        raise ValueError(
            f"LRA task {task!r}: missing {', '.join(missing)}. {offline}Expected in data_dir={root}: "
            f"{names['train']} (train) and {names['eval']} (evaluation), each with {_LAYOUTS[task]}. "
            f"Get the data from {_SOURCES[task]}."
        )
    return paths


def _lines(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def _int_label(field: bytes, path: Path, line: int, allow_float: bool = False) -> int:
    try:
        value = float(field) if allow_float else int(field)
    except ValueError:
        raise ValueError(f"{path}:{line}: label {field[:40]!r} is not an integer") from None
    if value != int(value) or value < 0:
        raise ValueError(f"{path}:{line}: label {field[:40]!r} must be a non-negative integer")
    return int(value)


def _is_header(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return True
    return False


def read_listops_tsv(path: str | os.PathLike) -> tuple[list[list[str]], list[int]]:
    """Token lists (``(`` and ``)`` dropped) and labels from an LRA ListOps TSV file (module docstring)."""
    path = Path(path)
    tokens, labels = [], []
    for number, raw in enumerate(_lines(path), start=1):
        fields = raw.split(b"\t")
        if number == 1 and _is_header(fields[-1]):
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 2 tab-separated fields (Source, Target), got {len(fields)}")
        example = [t for t in fields[0].decode("ascii", errors="replace").split() if t not in ("(", ")")]
        for pos, token in enumerate(example):
            if token not in LISTOPS_VOCAB or token == "<pad>":
                raise ValueError(f"{path}:{number}: unknown ListOps token {token!r} at position {pos}")
        label = _int_label(fields[1], path, number)
        if label > 9:
            raise ValueError(f"{path}:{number}: ListOps label must be 0…9, got {label}")
        tokens.append(example)
        labels.append(label)
    return tokens, labels


def read_text_tsv(path: str | os.PathLike) -> tuple[list[bytes], list[int]]:
    """Texts (raw bytes) and labels from a ``label<TAB>text`` file, with or without a header line."""
    path = Path(path)
    texts, labels = [], []
    for number, raw in enumerate(_lines(path), start=1):
        fields = raw.split(b"\t", 1)
        if number == 1 and _is_header(fields[0]):
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected '<label><TAB><text>', found no tab")
        labels.append(_int_label(fields[0], path, number))
        texts.append(fields[1])
    return texts, labels


def read_retrieval_tsv(path: str | os.PathLike) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Document pairs (raw bytes) and labels from an AAN ``label, id1, id2, text1, text2`` file."""
    path = Path(path)
    pairs, labels = [], []
    for number, raw in enumerate(_lines(path), start=1):
        fields = raw.split(b"\t", 4)
        if number == 1 and _is_header(fields[0]):
            continue
        if len(fields) != 5:
            raise ValueError(
                f"{path}:{number}: expected 5 tab-separated fields (label, id1, id2, text1, text2), got {len(fields)}"
            )
        labels.append(_int_label(fields[0], path, number, allow_float=True))
        pairs.append((fields[3], fields[4]))
    return pairs, labels


def encode_bytes(texts: list[bytes], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte ids (N, max_len) int16 (byte + 1, 0-padded, truncated) and lengths (N,) int64."""
    ids = np.zeros((len(texts), max_len), dtype=np.int16)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        kept = np.frombuffer(text[:max_len], dtype=np.uint8)
        ids[row, : kept.size] = kept.astype(np.int16) + 1
        lengths[row] = kept.size
    return ids, lengths
