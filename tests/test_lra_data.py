"""Long Range Arena data: ListOps evaluation and generation, Pathfinder connectivity, sequential
Fashion-MNIST, user TSV files, the on-disk cache and build_lra_datasets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from mirrorla.data import DatasetNotFoundError, find_fashion_mnist
from mirrorla.data.fashion_mnist import read_split
from mirrorla.data.lra import (
    LISTOPS_VOCAB,
    LRA_TASKS,
    build_lra_datasets,
    encode_listops,
    evaluate_listops,
    generate_listops,
    generate_pathfinder,
    generate_pathfinder_example,
    lra_cache_dir,
    pathfinder_preset,
)
from mirrorla.data.lra import datasets as lra_datasets

# ---------------------------------------------------------------------------------------------- ListOps


@pytest.mark.parametrize(
    "expression, value",
    [
        ("7", 7),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 1 8 ] 5 ]", 3),
        ("[MED 1 9 4 ]", 4),  # odd count: the middle value
        ("[MED 2 5 ]", 3),  # even count: int(np.median) = int(3.5)
        ("[MED 1 2 3 9 ]", 2),  # int(2.5)
        ("[MED 8 9 ]", 8),
        ("[SM 5 7 ]", 2),  # 12 mod 10
        ("[SM 9 9 9 9 ]", 6),  # 36 mod 10
        ("[SM [MAX 9 3 ] [MED 4 6 8 1 ] [MIN 7 [SM 4 6 ] ] ]", 4),  # 9 + 5 + 0 = 14
        ("[MAX [MAX [MAX [MIN 5 6 ] ] ] ]", 5),  # one-argument operators
    ],
)
def test_evaluate_listops_hand_computed(expression, value):
    assert evaluate_listops(expression.split()) == value


def test_evaluate_listops_median_matches_numpy():
    rng = np.random.default_rng(0)
    for count in range(1, 12):
        args = rng.integers(0, 10, count).tolist()
        tokens = ["[MED", *map(str, args), "]"]
        assert evaluate_listops(tokens) == int(np.median(args))


@pytest.mark.parametrize(
    "expression, message",
    [
        ("", "empty"),
        ("[MAX 1 2", r"'\[MAX' at token 0 is never closed"),
        ("[MAX [MIN 1 ] 2", r"at token 0 is never closed"),
        ("[MAX ]", r"at token 0 is closed at token 1 without arguments"),
        ("[MAX 1 ] ]", r"token 3 \(']'\) closes nothing"),
        ("[MAX 1 [FOO 2 ] ]", r"unknown token '\[FOO' at position 2"),
        ("( [MAX 1 2 ] )", r"unknown token '\(' at position 0"),
        ("1 2", r"token 1 .* second top-level"),
        ("[MAX 1 ] [MIN 2 ]", r"token 3 .* second top-level"),
        ("[MAX 10 ]", r"unknown token '10' at position 1"),
    ],
)
def test_evaluate_listops_malformed_names_position(expression, message):
    with pytest.raises(ValueError, match=message):
        evaluate_listops(expression.split())


def test_listops_vocab():
    assert LISTOPS_VOCAB["<pad>"] == 0
    assert sorted(LISTOPS_VOCAB.values()) == list(range(16))
    for token in ["0", "9", "[MAX", "[MIN", "[MED", "[SM", "]"]:
        assert LISTOPS_VOCAB[token] > 0


def test_generate_listops_deterministic_and_prefix_stable():
    kw = dict(min_len=20, max_len=60)
    a = generate_listops(8, 3, **kw)
    assert a == generate_listops(8, 3, **kw)
    assert a[0] != generate_listops(8, 4, **kw)[0]
    assert a[0] != generate_listops(8, 3, stream=1, **kw)[0]
    longer = generate_listops(12, 3, **kw)
    assert longer[0][:8] == a[0] and longer[1][:8] == a[1]


def test_generate_listops_lengths_and_labels():
    tokens, labels = generate_listops(40, 0, min_len=20, max_len=60)
    lengths = [len(t) for t in tokens]
    assert min(lengths) >= 20 and max(lengths) <= 60
    assert all(evaluate_listops(t) == y for t, y in zip(tokens, labels, strict=True))
    assert len(set(labels)) > 3  # labels vary
    assert all(t[0].startswith("[") for t in tokens)  # long expressions are operators


def test_generate_listops_lra_setting():
    tokens, labels = generate_listops(2, 1)
    for example, label in zip(tokens, labels, strict=True):
        assert 500 <= len(example) <= 2000
        assert evaluate_listops(example) == label
    depth, deepest = 0, 0
    for token in tokens[0]:
        depth += token.startswith("[") - (token == "]")
        deepest = max(deepest, depth)
    assert 2 <= deepest <= 9  # operators live at depths 1…9 (LRA: max depth 10, leaves at 10)


def test_generate_listops_bad_arguments():
    with pytest.raises(ValueError, match="min_len <= max_len"):
        generate_listops(1, 0, min_len=50, max_len=40)
    with pytest.raises(ValueError, match="max_args"):
        generate_listops(1, 0, max_args=1)


def test_encode_listops_roundtrip():
    tokens, _ = generate_listops(5, 0, min_len=20, max_len=60)
    ids, lengths = encode_listops(tokens, 64)
    assert ids.dtype == np.uint8 and ids.shape == (5, 64)
    inverse = {v: k for k, v in LISTOPS_VOCAB.items()}
    for row, example in enumerate(tokens):
        assert lengths[row] == len(example)
        assert [inverse[i] for i in ids[row, : lengths[row]]] == example
        assert (ids[row, lengths[row] :] == 0).all()
    truncated, short = encode_listops(tokens, 10)
    assert (short == 10).all() and (truncated == ids[:, :10]).all()


# ------------------------------------------------------------------------------------------- Pathfinder


def _components(mask: np.ndarray) -> np.ndarray:
    ndimage = pytest.importorskip("scipy.ndimage")
    return ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))[0]


def _dilate(mask: np.ndarray, side: int) -> np.ndarray:
    """Binary dilation with a side × side square anchored at its top-left (numpy only)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dr in range(side):
        for dc in range(side):
            out[dr:, dc:] |= mask[: h - dr, : w - dc]
    return out


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``radius`` of ``mask``."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            out |= padded[dr : dr + h, dc : dc + w]
    return out


def test_pathfinder_deterministic_prefix_stable_balanced():
    images, labels = generate_pathfinder(10, 5)
    again, _ = generate_pathfinder(10, 5)
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32) and labels.dtype == np.int64
    assert (images == again).all()
    assert not (images == generate_pathfinder(10, 6)[0]).all(axis=(1, 2)).any()
    assert not (images == generate_pathfinder(10, 5, stream=1)[0]).all(axis=(1, 2)).any()
    longer, longer_labels = generate_pathfinder(14, 5)
    assert (longer[:10] == images).all() and (longer_labels[:10] == labels).all()
    assert labels.tolist() == [1, 0] * 5
    example = generate_pathfinder_example(5, 3, 32, "medium")
    assert (example.image == images[3]).all() and example.label == labels[3]


@pytest.mark.parametrize(
    "size, difficulty", [(32, "easy"), (32, "medium"), (32, "hard"), (64, "medium"), (128, "easy")]
)
def test_pathfinder_connectivity(size, difficulty):
    preset = pathfinder_preset(size, difficulty)
    n = 50
    images, labels = generate_pathfinder(n, 11, size=size, difficulty=difficulty)
    raw_split_positives = 0
    for i in range(n):
        ex = generate_pathfinder_example(11, i, size, difficulty)
        assert (ex.image == images[i]).all() and ex.label == labels[i]
        (a, b), r = ex.dots, preset.dot_radius
        for row, col in ex.dots:  # dots drawn as full squares
            assert (ex.image[row - r : row + r + 1, col - r : col + r + 1] == 255).all()
        ends = [(tuple(c[0]), tuple(c[-1])) for c in ex.chains[:2]]
        if ex.label == 1:
            assert {a, b} == set(ends[0])
        else:
            assert a in ends[0] and b in ends[1]
        assert len(ex.chains) == 2 + preset.distractors
        for chain, dashes in zip(ex.chains, [preset.dashes] * 2 + [preset.distractor_dashes] * 99, strict=False):
            assert len(chain) == preset.chain_length(dashes)
            assert (np.abs(np.diff(chain, axis=0)).max(axis=1) == 1).all()  # 8-connected, no repeats
        # Paths keep the clearance: no pixel of one path within Chebyshev distance clearance - 1 of another.
        for p, mask in enumerate(ex.path_masks):
            others = np.delete(ex.path_masks, p, axis=0).any(0)
            assert not (_near(mask, preset.clearance - 1) & others).any()
        # Gap-free rasters: the dots share an 8-connected component iff label 1.
        union = ex.path_masks.any(0)
        assert ((ex.image > 0) <= union).all() and (ex.image > 0).sum() < union.sum()
        comp = _components(union)
        assert (comp[a] == comp[b]) == (ex.label == 1)
        # Drawn image: closing gaps of `gap` pixels joins the dots iff label 1.
        closed = _components(_dilate(ex.image > 0, preset.gap + 1))
        assert (closed[a] == closed[b]) == (ex.label == 1)
        raw = _components(ex.image > 0)
        raw_split_positives += ex.label == 1 and raw[a] != raw[b]
    assert raw_split_positives > 0  # the gaps are real: without closing them, positives fall apart


def test_pathfinder_bad_arguments():
    with pytest.raises(ValueError, match=r"size must be one of \(32, 64, 128\)"):
        generate_pathfinder(1, 0, size=48)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        generate_pathfinder(1, 0, difficulty="extreme")


# -------------------------------------------------------------------------------------- Sequential image


def _fashion_mnist():
    try:
        return find_fashion_mnist(download=False)
    except DatasetNotFoundError:
        return None


@pytest.mark.skipif(
    _fashion_mnist() is None, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_image_task_matches_fashion_mnist():
    train, test, info = build_lra_datasets("image", train_size=300, eval_size=200)
    files = _fashion_mnist()
    for ds, split, n in ((train, "train", 300), (test, "test", 200)):
        images, labels = read_split(files, split)
        assert ds.tokens.shape == (n, 1024) and ds.tokens.dtype == torch.uint8
        grid = ds.tokens.view(n, 32, 32).numpy()
        assert (grid[:, 2:30, 2:30] == images[:n]).all()
        assert grid[:, :2].max() == 0 and grid[:, 30:].max() == 0 and grid[:, :, :2].max() == 0
        assert (ds.labels.numpy() == labels[:n]).all() and (ds.lengths == 1024).all()
    tokens, label = train[0]
    assert tokens.dtype == torch.int64 and tokens.max() <= 255 and label == int(train.labels[0])
    assert (info.num_classes, info.vocab_size, info.max_len, info.grid, info.pad_id) == (10, 256, 1024, (32, 32), None)
    assert info.source == "fashion_mnist" and len(info.files) == 4
    assert sum(info.label_counts) == 200 and info.label_counts == tuple(np.bincount(test.labels.numpy(), minlength=10))
    with pytest.raises(ValueError, match="60000 examples available"):
        build_lra_datasets("image", train_size=60_001)
    with pytest.raises(ValueError, match="always have 1024 tokens"):
        build_lra_datasets("image", max_len=512)


# --------------------------------------------------------------------------------------------- TSV files


def test_listops_tsv_roundtrip(tmp_path):
    # LRA's generator writes '(' ')' grouping tokens around every application step.
    rows = ["( ( ( [MAX 2 ) 9 ) ] )\t9", "( ( ( ( [SM 5 ) 7 ) ( ( [MIN 3 ) 1 ) ] ) ] )\t3", "4\t4"]
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n" + "\n".join(rows) + "\n")
    (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n" + rows[1] + "\n")
    train, test, info = build_lra_datasets("listops", data_dir=tmp_path, max_len=6)
    inverse = {v: k for k, v in LISTOPS_VOCAB.items()}
    decoded = [[inverse[int(i)] for i in row[:n]] for row, n in zip(train.tokens, train.lengths, strict=True)]
    assert decoded == [["[MAX", "2", "9", "]"], ["[SM", "5", "7", "[MIN", "3", "1"], ["4"]]  # truncated to 6
    assert train.labels.tolist() == [9, 3, 4] and test.labels.tolist() == [3]
    assert info.source == "tsv" and info.max_len == 6 and info.pad_id == 0 and len(info.files) == 2
    (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n( [MAX 2 ) [FOO ]\t2\n")
    with pytest.raises(ValueError, match=r"basic_test.tsv:2: unknown ListOps token '\[FOO'"):
        build_lra_datasets("listops", data_dir=tmp_path)


def test_text_tsv_roundtrip(tmp_path):
    (tmp_path / "imdb_train.tsv").write_bytes("label\ttext\n1\tgreat film\n0\tna\u00efve\tplot\n".encode())
    (tmp_path / "imdb_test.tsv").write_bytes(b"0\tbad\n1\tfine\r\n")  # no header, a CRLF line end
    train, test, info = build_lra_datasets("text", data_dir=tmp_path, max_len=8)
    assert train.tokens.dtype == torch.int16 and train.tokens.shape == (2, 8)
    expected = np.frombuffer(b"great fi", dtype=np.uint8) + 1
    assert (train.tokens[0].numpy() == expected).all()
    assert train.lengths.tolist() == [8, 8] and test.lengths.tolist() == [3, 4]
    assert (test.tokens[0, 3:] == 0).all() and train.labels.tolist() == [1, 0]
    second = bytes((train.tokens[1].numpy() - 1).astype(np.uint8))
    assert second == "na\u00efve\tp".encode()[:8]  # bytes, tabs kept in the text
    assert (info.num_classes, info.vocab_size, info.pad_id, info.pair, info.source) == (2, 257, 0, False, "tsv")
    assert info.label_counts == (1, 1)
    default = build_lra_datasets("text", data_dir=tmp_path)[2]
    assert default.max_len == 4096
    with pytest.raises(ValueError, match="train_size 3 is larger than the 2 examples available in"):
        build_lra_datasets("text", data_dir=tmp_path, train_size=3)


def test_retrieval_tsv_roundtrip(tmp_path):
    lines = ["1.0\tP1\tP2\tfirst doc\tsecond", "0\tP3\tP4\tabc\tdefgh"]
    (tmp_path / "new_aan_pairs.train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "new_aan_pairs.test.tsv").write_text(lines[1] + "\n")
    train, test, info = build_lra_datasets("retrieval", data_dir=tmp_path, max_len=5, train_size=2)
    assert train.tokens.shape == (2, 2, 5) and train.pair and info.pair
    assert train.lengths.tolist() == [[5, 5], [3, 5]] and train.labels.tolist() == [1, 0]
    assert bytes((train.tokens[1, 0, :3].numpy() - 1).astype(np.uint8)) == b"abc"
    tokens, label = test[0]
    assert tokens.shape == (2, 5) and tokens.dtype == torch.int64 and label == 0
    batch, labels = train.get_batch(torch.tensor([1, 0]))
    assert batch.shape == (2, 2, 5) and batch.dtype == torch.int64 and labels.tolist() == [0, 1]
    assert (info.num_classes, info.vocab_size, info.max_len) == (2, 257, 5)
    assert build_lra_datasets("retrieval", data_dir=tmp_path)[2].max_len == 4000


@pytest.mark.parametrize(
    "task, name, layout",
    [
        ("text", "imdb_train.tsv", "<label><TAB><text>"),
        ("retrieval", "new_aan_pairs.train.tsv", "<label><TAB><id1><TAB><id2><TAB><text1><TAB><text2>"),
        ("listops", "basic_train.tsv", "Source<TAB>Target"),
    ],
)
def test_missing_tsv_files_explain_layout(tmp_path, task, name, layout):
    with pytest.raises(ValueError) as err:
        build_lra_datasets(task, data_dir=tmp_path)
    message = str(err.value)
    assert name in message and layout in message and str(tmp_path) in message
    if task != "listops":
        assert "IMDB and AAN cannot be obtained offline by this library" in message
        with pytest.raises(ValueError, match="cannot be obtained offline"):
            build_lra_datasets(task)


# ------------------------------------------------------------------------------------ Cache and the API


def test_generated_pathfinder_is_cached(tmp_path, monkeypatch):
    calls = []
    original = lra_datasets.generate_pathfinder

    def counting(*args, **kwargs):
        calls.append(kwargs["stream"])
        return original(*args, **kwargs)

    monkeypatch.setattr(lra_datasets, "generate_pathfinder", counting)
    train, test, info = build_lra_datasets("pathfinder64", cache_dir=tmp_path, train_size=6, eval_size=4, seed=2)
    assert calls == [0, 1]  # train from stream 0, eval from stream 1
    again, again_test, info2 = build_lra_datasets("pathfinder64", cache_dir=tmp_path, train_size=6, eval_size=4, seed=2)
    assert calls == [0, 1]  # nothing regenerated
    assert torch.equal(train.tokens, again.tokens) and torch.equal(test.tokens, again_test.tokens)
    assert info == info2
    images, _ = original(6, 2, size=64, difficulty="medium")
    assert (train.tokens.numpy() == images.reshape(6, -1)).all()
    assert not torch.equal(train.tokens[:4], test.tokens)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("pathfinder64-v1-difficulty=medium-")
    assert "seed=2" in folders[0].name and "train=6" in folders[0].name and "eval=4" in folders[0].name
    assert sorted(p.name for p in folders[0].iterdir()) == ["eval.npz", "meta.json", "train.npz"]
    assert json.loads((folders[0] / "meta.json").read_text())["params"]["seed"] == 2
    assert [f["path"] for f in info.files] == [str(p.resolve()) for p in sorted(folders[0].iterdir())]
    assert all(re.fullmatch("[0-9a-f]{64}", f["sha256"]) for f in info.files)
    assert (info.grid, info.max_len, info.num_classes, info.difficulty, info.pad_id) == (
        (64, 64),
        4096,
        2,
        "medium",
        None,
    )
    assert info.label_counts == (2, 2) and info.source == "generated" and not info.pair
    build_lra_datasets("pathfinder64", cache_dir=tmp_path, train_size=6, eval_size=4, seed=3)
    assert calls == [0, 1, 0, 1] and len(list(tmp_path.iterdir())) == 2  # a new seed is a new folder


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    real_savez = np.savez
    state = {"calls": 0}

    def failing_savez(fh, **arrays):
        state["calls"] += 1
        if state["calls"] == 2:  # the eval split
            fh.write(b"partial")
            raise OSError("disk full")
        real_savez(fh, **arrays)

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        build_lra_datasets("pathfinder32", cache_dir=tmp_path, train_size=4, eval_size=2)
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["train.npz"]  # no temp files, no meta.json
    monkeypatch.setattr(np, "savez", real_savez)
    train, test, _ = build_lra_datasets("pathfinder32", cache_dir=tmp_path, train_size=4, eval_size=2)
    assert len(train) == 4 and len(test) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["eval.npz", "meta.json", "train.npz"]


def test_generated_listops_dataset(tmp_path):
    train, test, info = build_lra_datasets("listops", cache_dir=tmp_path, train_size=4, eval_size=3, seed=1)
    assert train.tokens.shape == (4, 2000) and train.tokens.dtype == torch.uint8
    assert ((train.lengths >= 500) & (train.lengths <= 2000)).all()
    inverse = {v: k for k, v in LISTOPS_VOCAB.items()}
    for row, n, label in zip(train.tokens, train.lengths, train.labels, strict=True):
        assert evaluate_listops([inverse[int(i)] for i in row[:n]]) == label
        assert (row[n:] == 0).all()
    tokens, expected_labels = generate_listops(3, 1, stream=1)
    assert test.labels.tolist() == expected_labels and test.lengths.tolist() == [len(t) for t in tokens]
    assert info == lra_datasets.LRAInfo(
        "listops", 10, 16, 2000, None, 0, False, 4, 3, "generated", None,
        tuple(np.bincount(expected_labels, minlength=10).tolist()), info.files,
    )  # fmt: skip
    assert len(info.files) == 3


def test_lra_cache_dir(tmp_path, monkeypatch):
    assert lra_cache_dir(tmp_path) == tmp_path
    monkeypatch.setenv("MIRRORLA_CACHE", str(tmp_path / "c"))
    assert lra_cache_dir() == tmp_path / "c" / "lra"
    monkeypatch.delenv("MIRRORLA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert lra_cache_dir() == tmp_path / "x" / "mirrorla" / "lra"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="listopz"), "unknown LRA task 'listopz'; valid tasks: " + ", ".join(LRA_TASKS)),
        (dict(task="pathfinder32", difficulty="extreme"), "difficulty must be one of easy, medium, hard"),
        (dict(task="listops", max_len=100), r"max_len 100 is below .* pass max_len >= 500"),
        (dict(task="pathfinder64", max_len=1024), "always have 4096 tokens"),
        (dict(task="pathfinder32", data_dir="."), "always generated"),
        (dict(task="listops", train_size=0), "train_size must be a positive integer"),
        (dict(task="listops", eval_size=2.5), "eval_size must be a positive integer"),
        (dict(task="text", max_len=-1), "max_len must be a positive integer"),
    ],
)
def test_build_lra_datasets_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lra_datasets(cache_dir=tmp_path, **kwargs)
