"""Long Range Arena (Tay et al., 2021) tasks, offline and deterministic: ``build_lra_datasets(task)``.

ListOps and Pathfinder are generated (and cached), Image is Fashion-MNIST as pixel sequences, Text and
Retrieval are read from TSV files the user supplies. See :mod:`mirrorla.data.lra.datasets`.
"""

from mirrorla.data.lra.datasets import LRA_TASKS, LRAInfo, TokenDataset, build_lra_datasets, lra_cache_dir
from mirrorla.data.lra.listops import LISTOPS_VOCAB, encode_listops, evaluate_listops, generate_listops
from mirrorla.data.lra.pathfinder import (
    PathfinderExample,
    PathfinderPreset,
    generate_pathfinder,
    generate_pathfinder_example,
    pathfinder_preset,
)
from mirrorla.data.lra.sequential_image import fashion_mnist_sequences
from mirrorla.data.lra.tsv import encode_bytes, read_listops_tsv, read_retrieval_tsv, read_text_tsv

__all__ = [
    "LISTOPS_VOCAB",
    "LRA_TASKS",
    "LRAInfo",
    "PathfinderExample",
    "PathfinderPreset",
    "TokenDataset",
    "build_lra_datasets",
    "encode_bytes",
    "encode_listops",
    "evaluate_listops",
    "fashion_mnist_sequences",
    "generate_listops",
    "generate_pathfinder",
    "generate_pathfinder_example",
    "lra_cache_dir",
    "pathfinder_preset",
    "read_listops_tsv",
    "read_retrieval_tsv",
    "read_text_tsv",
]
