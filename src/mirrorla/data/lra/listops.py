"""ListOps (Nangia & Bowman, 2018) as Long Range Arena uses it: nested list operations on digits, 10 classes.

An expression is a digit 0…9 or an operator applied to one or more expressions::

    [MAX 2 9 [MIN 4 7 ] 0 ]        → 9

Operators: ``[MAX`` (maximum), ``[MIN`` (minimum), ``[MED`` (median) and ``[SM`` (sum modulo 10). The
label is the value of the whole expression (0…9). Token counts are the number of these tokens: the
example above has 9 tokens.

The median follows LRA's generator (``lra_benchmarks/data/listops.py``, ``int(np.median(values))``):
for an even count it is the mean of the two middle values truncated to an integer, so
``[MED 2 5 ]`` is 3 and ``[MED 1 2 3 9 ]`` is 2.

Generation draws trees from LRA's distribution (same file): below the maximum depth a node is an
operator with probability 0.25, else a uniformly drawn digit; an operator takes 2…``max_args``
arguments and one of the four operators uniformly; the root is at depth 1 and nodes at ``max_depth``
are digits. Trees are drawn until one has ``min_len`` … ``max_len`` tokens (inclusive; LRA's bounds
are exclusive, a difference of two lengths), so accepted examples follow LRA's length-conditioned
distribution. A tree is abandoned as soon as it grows past ``max_len`` tokens, which keeps
rejection cheap. LRA settings: ``max_depth=10``, ``max_args=10``, lengths 500…2000.

Example ``i`` of ``generate_listops(n, seed, stream=s)`` is drawn from
``np.random.default_rng([seed, s, i])`` alone, so a larger ``n`` extends a smaller one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "LISTOPS_OPERATORS",
    "LISTOPS_VOCAB",
    "encode_listops",
    "evaluate_listops",
    "generate_listops",
]

LISTOPS_OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
#: Token → id. 0 is padding; digits 1…10, operators 11…14, ``]`` 15 (vocabulary size 16).
LISTOPS_VOCAB: dict[str, int] = {"<pad>": 0, **{d: 1 + i for i, d in enumerate(DIGITS)}}
LISTOPS_VOCAB.update({op: 11 + i for i, op in enumerate(LISTOPS_OPERATORS)})
LISTOPS_VOCAB[CLOSE] = 15

# LRA's VALUE_P: below max_depth a node is a digit with probability 0.75 (``r > 0.25``).
_OPERATOR_PROBABILITY = 0.25
_MAX_TREES_PER_EXAMPLE = 100_000


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    ordered = sorted(args)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) // 2  # int(np.median(...)): floor of the mean, values ≥ 0


def evaluate_listops(tokens: Sequence[str]) -> int:
    """The value (0…9) of one ListOps expression given as tokens, computed with an explicit stack.

    Raises:
        ValueError: empty input, an unknown token, a ``]`` without an open operator, an operator closed
            without arguments, an operator left open, or more than one top-level expression; the message
            names the token position (0-based).
    """
    stack: list[tuple[str, int, list[int]]] = []  # (operator, position, arguments so far)
    result: int | None = None
    for pos, token in enumerate(tokens):
        value: int | None = None
        if token in LISTOPS_OPERATORS:
            if result is not None and not stack:
                raise ValueError(f"token {pos} ({token!r}) starts a second top-level expression; expected the end")
            stack.append((token, pos, []))
            continue
        if token == CLOSE:
            if not stack:
                raise ValueError(f"token {pos} (']') closes nothing: no operator is open")
            op, start, args = stack.pop()
            if not args:
                raise ValueError(f"operator {op!r} at token {start} is closed at token {pos} without arguments")
            value = _apply(op, args)
        elif len(token) == 1 and "0" <= token <= "9":
            value = int(token)
        else:
            raise ValueError(
                f"unknown token {token!r} at position {pos}; expected a digit 0-9, one of "
                f"{', '.join(LISTOPS_OPERATORS)} or ']' (drop LRA's '(' and ')' grouping tokens first)"
            )
        if stack:
            stack[-1][2].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError(f"token {pos} ({token!r}) is a second top-level expression; expected the end")
    if stack:
        op, start, _ = stack[-1]
        raise ValueError(f"operator {op!r} at token {start} is never closed; {len(stack)} ']' missing at the end")
    if result is None:
        raise ValueError("empty expression: expected at least one token")
    return result


class _TooLong(Exception):
    """A tree grew past the length limit; it is abandoned."""


def _uniforms(rng: np.random.Generator, chunk: int = 4096) -> Iterator[float]:
    while True:
        yield from rng.random(chunk).tolist()


def _draw_tree(draw: Iterator[float], max_len: int, max_depth: int, max_args: int) -> tuple[list[str], int]:
    """One tree from LRA's distribution as (tokens, value); raises :class:`_TooLong` past ``max_len``."""
    tokens: list[str] = []
    append = tokens.append

    def node(depth: int) -> int:
        if depth < max_depth and next(draw) <= _OPERATOR_PROBABILITY:
            n_args = 2 + int(next(draw) * (max_args - 1))
            op = LISTOPS_OPERATORS[int(next(draw) * 4)]
            append(op)
            args = [node(depth + 1) for _ in range(n_args)]
            append(CLOSE)
            if len(tokens) > max_len:
                raise _TooLong
            return _apply(op, args)
        digit = int(next(draw) * 10)
        append(DIGITS[digit])
        if len(tokens) > max_len:
            raise _TooLong
        return digit

    return tokens, node(1)


def _check_args(min_len: int, max_len: int, max_depth: int, max_args: int) -> None:
    if min_len < 1 or max_len < min_len:
        raise ValueError(
            f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}; LRA uses 500 and 2000"
        )
    if max_depth < 1:
        raise ValueError(f"max_depth must be at least 1, got {max_depth}; LRA uses 10")
    if max_args < 2:
        raise ValueError(f"max_args must be at least 2 (operators take 2…max_args arguments), got {max_args}")
    if min_len > 1 and max_depth < 2:
        raise ValueError(f"max_depth=1 allows only single digits, but min_len={min_len}; raise max_depth")


def generate_listops(
    n: int,
    seed: int,
    *,
    stream: int = 0,
    min_len: int = 500,
    max_len: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> tuple[list[list[str]], list[int]]:
    """``n`` random ListOps expressions with ``min_len`` … ``max_len`` tokens and their values.

    Example ``i`` depends only on ``(seed, stream, i)`` (module docstring). Token counts are
    ``[len(t) for t in tokens]``; :func:`encode_listops` returns them with the ids.

    Returns:
        tokens: ``n`` lists of token strings.
        labels: ``n`` values in 0…9.
    """
    _check_args(min_len, max_len, max_depth, max_args)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    all_tokens, labels = [], []
    for i in range(n):
        draw = _uniforms(np.random.default_rng([seed, stream, i]))
        for _ in range(_MAX_TREES_PER_EXAMPLE):
            try:
                tokens, value = _draw_tree(draw, max_len, max_depth, max_args)
            except _TooLong:
                continue
            if len(tokens) >= min_len:
                break
        else:
            raise ValueError(
                f"no tree with {min_len}…{max_len} tokens in {_MAX_TREES_PER_EXAMPLE} draws (max_depth={max_depth}, "
                f"max_args={max_args}); widen the length range or raise max_depth/max_args"
            )
        all_tokens.append(tokens)
        labels.append(value)
    return all_tokens, labels


def encode_listops(tokens: Sequence[Sequence[str]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (N, max_len) uint8, right-padded with 0 and truncated to ``max_len``, and lengths (N,) int64.

    Raises:
        ValueError: a token outside :data:`LISTOPS_VOCAB` (the message names example and position).
    """
    ids = np.zeros((len(tokens), max_len), dtype=np.uint8)
    lengths = np.zeros(len(tokens), dtype=np.int64)
    for row, example in enumerate(tokens):
        kept = example[:max_len]
        try:
            ids[row, : len(kept)] = [LISTOPS_VOCAB[t] for t in kept]
        except KeyError as err:
            pos = list(kept).index(err.args[0])
            raise ValueError(
                f"example {row}: unknown ListOps token {err.args[0]!r} at position {pos}; expected digits, "
                f"{', '.join(LISTOPS_OPERATORS)} or ']'"
            ) from None
        lengths[row] = len(kept)
    return ids, lengths
