"""Pathfinder (Linsley et al., 2018; Kim et al., 2020) as in Long Range Arena: are two dots joined by a path?

Each grey-scale image (uint8, ``size`` × ``size``, background 0, strokes 255) holds two *main* paths of
``dashes`` dashes, ``distractors`` shorter paths, and two dots (filled squares of side
``2 * dot_radius + 1``). Label 1: the dots sit on the two ends of the same main path; label 0: one dot
sits on an end of each main path. Both labels always show two full-length paths, so counting long
paths says nothing; the geometry of an example is drawn before its label and does not depend on it.

A path is a smooth random walk: unit steps whose heading turns by a uniform angle in ±``max_turn``
(45°) over every ``dash + gap`` steps, rasterised to an 8-connected chain of pixels, then drawn as
``dash`` pixels on, ``gap`` pixels off along the chain (starting and ending on a dash). Each path is
first drawn in empty space (never coming back near itself), then moved to an offset drawn uniformly
among those where it fits; all offsets are tested at once with numpy. Pixels of different paths (dots
and the reserved dot squares at both ends of both main paths included) keep a Chebyshev distance of at
least ``clearance = gap + 2``, so connectivity is unambiguous:

- on the gap-free rasters, the dots share an 8-connected component iff the label is 1;
- on the drawn image, dilating with a ``(gap + 1)`` × ``(gap + 1)`` square (which links exactly the
  stroke pixels within Chebyshev distance ``gap + 1``: consecutive dashes) and taking 8-connected
  components joins the dots iff the label is 1.

Presets: the main paths' dash count, then the distractors as count × dashes:

====  ====  ===  ==========  =========  ==========  ==========  ===========
size  dash  gap  dot radius  clearance  easy        medium      hard
====  ====  ===  ==========  =========  ==========  ==========  ===========
32    2     1    1           3          6; 1 × 2    9; 2 × 3    11; 5 × 4
64    3     2    2           4          6; 2 × 2    9; 3 × 3    14; 4 × 5
128   7     3    3           5          6; 3 × 2    9; 4 × 3    14; 7 × 5
====  ====  ===  ==========  =========  ==========  ==========  ===========

The dash counts follow Pathfinder's contour lengths 6 / 9 / 14 (paddles per contour), which LRA's TFDS
builder (``lra_benchmarks/data/pathfinder.py``) reads from ``curv_baseline`` (its "easy" split),
``curv_contour_length_9`` ("intermediate", our ``medium``) and ``curv_contour_length_14`` ("hard"). LRA's
32×32 data used contour length 14 with ``20 // (14 // 3) = 5`` distractors of length 4; its 64×64 and
128×128 data about 22 / 4.7 and 35 / 4.7 distractors of length 4.7, which the hard row mirrors. At 32×32
two 14-dash paths do not fit with a 3-pixel clearance (LRA's strokes may crowd each other), so our 32×32
``hard`` uses 11 dashes. Lines here are one pixel wide and not anti-aliased (LRA's are anti-aliased).

Example ``i`` of stream ``s`` is drawn from ``np.random.default_rng([seed, s, i])`` alone (prefix
stable); its label is ``1 - i % 2``, so labels alternate 1, 0, 1, … and any prefix is balanced.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PATHFINDER_DIFFICULTIES",
    "PATHFINDER_SIZES",
    "PathfinderExample",
    "PathfinderPreset",
    "generate_pathfinder",
    "generate_pathfinder_example",
    "pathfinder_preset",
]

PATHFINDER_SIZES = (32, 64, 128)
PATHFINDER_DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class PathfinderPreset:
    """Drawing parameters for one (size, difficulty); see the table in the module docstring."""

    size: int
    difficulty: str
    dashes: int
    distractors: int
    distractor_dashes: int
    dash: int
    gap: int
    dot_radius: int
    max_turn: float

    @property
    def clearance(self) -> int:
        """Minimum Chebyshev distance between pixels of different paths."""
        return self.gap + 2

    def chain_length(self, dashes: int) -> int:
        return dashes * self.dash + (dashes - 1) * self.gap


# size → (dash, gap, dot radius); difficulty → size → (dashes, distractors, distractor dashes)
_GEOMETRY = {32: (2, 1, 1), 64: (3, 2, 2), 128: (7, 3, 3)}
_COUNTS = {
    "easy": {32: (6, 1, 2), 64: (6, 2, 2), 128: (6, 3, 2)},
    "medium": {32: (9, 2, 3), 64: (9, 3, 3), 128: (9, 4, 3)},
    "hard": {32: (11, 5, 4), 64: (14, 4, 5), 128: (14, 7, 5)},
}
_MAX_TURN = math.radians(45.0)
_TURN_TRIES = 8  # turns tried per step before the walk backs up
_BACKTRACKS = 20  # back-ups per curve before it is abandoned
_PATH_TRIES = 30  # curves drawn per path before the whole layout is redrawn
_ORIENTATIONS = 3  # random rotations / reflections tried per curve
_LAYOUT_TRIES = 200


def pathfinder_preset(size: int, difficulty: str) -> PathfinderPreset:
    """The preset for ``size`` ∈ {32, 64, 128} and ``difficulty`` ∈ {'easy', 'medium', 'hard'}."""
    if size not in _GEOMETRY:
        raise ValueError(f"Pathfinder size must be one of {PATHFINDER_SIZES}, got {size!r}")
    if difficulty not in _COUNTS:
        raise ValueError(f"Pathfinder difficulty must be one of {PATHFINDER_DIFFICULTIES}, got {difficulty!r}")
    dash, gap, dot_radius = _GEOMETRY[size]
    dashes, distractors, distractor_dashes = _COUNTS[difficulty][size]
    return PathfinderPreset(size, difficulty, dashes, distractors, distractor_dashes, dash, gap, dot_radius, _MAX_TURN)


@dataclass(frozen=True)
class PathfinderExample:
    """One image with what the tests need to check it.

    image: (S, S) uint8. label: 1 if the dots are the two ends of one path. dots: the two dot centres
    as (row, col). path_masks: (P, S, S) bool gap-free rasters, main paths first (0 and 1), then the
    distractors; a main path's mask includes the dots drawn on it. chains: each path's pixels in order
    along the path, (L, 2) int64 (row, col).
    """

    image: np.ndarray
    label: int
    dots: tuple[tuple[int, int], tuple[int, int]]
    path_masks: np.ndarray
    chains: tuple[np.ndarray, ...]
    preset: PathfinderPreset


def _stamp(blocked: bytearray, size: int, row: int, col: int, radius: int) -> None:
    """Mark the square of ``radius`` (Chebyshev) around (row, col) in the flat ``size`` × ``size`` mask."""
    c0, c1 = max(0, col - radius), min(size, col + radius + 1)
    ones = b"\x01" * (c1 - c0)
    for r in range(max(0, row - radius), min(size, row + radius + 1)):
        blocked[r * size + c0 : r * size + c1] = ones


def _uniforms(rng: np.random.Generator, chunk: int = 1024) -> Iterator[float]:
    while True:
        yield from rng.random(chunk).tolist()


def _segment(
    own: bytearray, size: int, start: tuple[float, float, float], last: tuple[int, int], turn: float, steps: int
) -> tuple[list[tuple[int, int]], float, float] | None:
    """The new chain pixels of ``steps`` unit steps turning by ``turn`` in all, or None if one is blocked."""
    y, x, heading = start
    new = []
    for k in range(1, steps + 1):
        angle = heading + turn * k / steps
        y += math.sin(angle)
        x += math.cos(angle)
        pixel = (math.floor(y + 0.5), math.floor(x + 0.5))
        if pixel == last:
            continue
        if own[pixel[0] * size + pixel[1]]:
            return None
        new.append(pixel)
        last = pixel
    return new, y, x


def _curve(draw: Iterator[float], preset: PathfinderPreset, length: int, dots: bool) -> list[tuple[int, int]] | None:
    """A chain of ``length`` pixels starting at (0, 0), drawn in empty space; None if the walk got stuck.

    The walk grows ``dash + gap`` unit steps at a time with a uniform turn in ±``max_turn``; pixels
    ``lag`` chain steps back (and the start's dot square) block it, so it never comes back near
    itself. When no turn fits it backs up, further after every few failures.
    """
    clear, dot_r, steps = preset.clearance, preset.dot_radius, preset.dash + preset.gap
    half = length + steps + 1  # the scratch canvas is wide enough that the walk never leaves it
    size = 2 * half + 1
    lag = 2 * clear + 2
    chain = [(half, half)]
    state = (1, float(half), float(half), 2.0 * math.pi * next(draw), 0, not dots, bytearray(size * size))
    history = []
    backtracks = 0
    while state[0] < length:
        n, y, x, heading, aged, zone_done, own = state
        for _ in range(_TURN_TRIES):
            turn = (2.0 * next(draw) - 1.0) * preset.max_turn
            grown = _segment(own, size, (y, x, heading), chain[n - 1], turn, steps)
            if grown is not None:
                break
        if grown is None:
            backtracks += 1
            if not history or backtracks > _BACKTRACKS:
                return None
            for _ in range(min(len(history), 1 + backtracks // 3)):
                state = history.pop()
            del chain[state[0] :]
            continue
        new, y, x = grown
        history.append(state)
        chain.extend(new)
        own = bytearray(own)
        while aged + lag <= len(chain) - 1:
            _stamp(own, size, *chain[aged], clear - 1)
            aged += 1
        if not zone_done and len(chain) > lag + 2 * dot_r:
            _stamp(own, size, half, half, clear - 1 + dot_r)
            zone_done = True
        state = (len(chain), y, x, heading + turn, aged, zone_done, own)
    return [(r - half, c - half) for r, c in chain[:length]]


def _place(
    blocked: np.ndarray,
    draw: Iterator[float],
    curve: list[tuple[int, int]],
    footprint: set[tuple[int, int]],
    margin: int,
) -> list[tuple[int, int]] | None:
    """``curve`` moved to a uniformly drawn offset where ``footprint`` (relative pixels) avoids ``blocked``
    and stays ``margin`` pixels inside the image; None if no offset fits. All offsets are tested at once.
    """
    size = blocked.shape[0]
    rows = [r for r, _ in footprint]
    cols = [c for _, c in footprint]
    r_lo, r_hi = margin - min(rows), size - 1 - margin - max(rows)  # allowed row offsets
    c_lo, c_hi = margin - min(cols), size - 1 - margin - max(cols)
    if r_hi < r_lo or c_hi < c_lo:
        return None
    h, w = r_hi - r_lo + 1, c_hi - c_lo + 1
    hit = np.zeros((h, w), dtype=bool)
    for r, c in footprint:
        hit |= blocked[r_lo + r : r_lo + r + h, c_lo + c : c_lo + c + w]
    fits = np.flatnonzero(~hit)
    if fits.size == 0:
        return None
    dr, dc = divmod(int(fits[int(next(draw) * fits.size)]), w)
    dr, dc = dr + r_lo, dc + c_lo
    return [(r + dr, c + dc) for r, c in curve]


def _layout(seed: int, stream: int, index: int, preset: PathfinderPreset) -> list[list[tuple[int, int]]]:
    """Chains of the two main paths and the distractors for one example (rejection until all fit)."""
    draw = _uniforms(np.random.default_rng([seed, stream, index]))
    size, clear, dot_r = preset.size, preset.clearance, preset.dot_radius
    plan = [(preset.chain_length(preset.dashes), True)] * 2
    plan += [(preset.chain_length(preset.distractor_dashes), False)] * preset.distractors
    for _ in range(_LAYOUT_TRIES):
        flat = bytearray(size * size)  # pixels closer than `clearance` to a placed path (or its dot squares)
        blocked = np.frombuffer(flat, dtype=np.bool_).reshape(size, size)
        chains = []
        for length, dots in plan:
            for attempt in range(_PATH_TRIES * _ORIENTATIONS):
                if attempt % _ORIENTATIONS == 0:
                    drawn = _curve(draw, preset, length, dots)
                if drawn is None:
                    continue
                # Rotating / mirroring a curve that did not fit is cheaper than drawing a new one.
                curve = _orient(drawn, int(next(draw) * 8))
                footprint = set(curve)
                if dots:
                    footprint.update(_square(*curve[0], dot_r) + _square(*curve[-1], dot_r))
                chain = _place(blocked, draw, curve, footprint, dot_r)
                if chain is not None:
                    break
            else:
                break
            for pixel in chain:
                _stamp(flat, size, *pixel, clear - 1)
            if dots:
                for end in (chain[0], chain[-1]):
                    _stamp(flat, size, *end, clear - 1 + dot_r)
            chains.append(chain)
        else:
            return chains
    raise RuntimeError(
        f"could not fit the paths of Pathfinder preset {preset} in {_LAYOUT_TRIES} layouts (example {index})"
    )


def _orient(curve: list[tuple[int, int]], symmetry: int) -> list[tuple[int, int]]:
    """``curve`` under one of the 8 symmetries of the square (bit 0: transpose, 1: flip rows, 2: flip cols)."""
    if symmetry & 1:
        curve = [(c, r) for r, c in curve]
    if symmetry & 2:
        curve = [(-r, c) for r, c in curve]
    if symmetry & 4:
        curve = [(r, -c) for r, c in curve]
    return curve


def _square(row: int, col: int, radius: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(row - radius, row + radius + 1) for c in range(col - radius, col + radius + 1)]


def _dots(chains: list[list[tuple[int, int]]], label: int, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
    first, second = chains[0], chains[1]
    if label == 1:
        return first[0], first[-1]
    # Which ends carry the dots in a negative: fixed by the index so the layout's draws stay label-free.
    return (first[0] if index % 4 < 2 else first[-1]), (second[0] if index % 8 < 4 else second[-1])


def _draw(image: np.ndarray, chains, dots, preset: PathfinderPreset) -> None:
    period = preset.dash + preset.gap
    for chain in chains:
        pixels = np.asarray(chain)
        on = np.arange(len(pixels)) % period < preset.dash
        image[pixels[on, 0], pixels[on, 1]] = 255
    r = preset.dot_radius
    for row, col in dots:
        image[row - r : row + r + 1, col - r : col + r + 1] = 255


def _label(index: int) -> int:
    return 1 - index % 2


def generate_pathfinder_example(
    seed: int, i: int, size: int = 32, difficulty: str = "medium", *, stream: int = 0
) -> PathfinderExample:
    """Example ``i`` of :func:`generate_pathfinder` with its dots, chains and gap-free path rasters."""
    preset = pathfinder_preset(size, difficulty)
    chains = _layout(seed, stream, i, preset)
    label = _label(i)
    dots = _dots(chains, label, i)
    image = np.zeros((size, size), dtype=np.uint8)
    _draw(image, chains, dots, preset)
    masks = np.zeros((len(chains), size, size), dtype=bool)
    for p, chain in enumerate(chains):
        pixels = np.asarray(chain)
        masks[p, pixels[:, 0], pixels[:, 1]] = True
    r = preset.dot_radius
    owners = [0, 0] if label == 1 else [0, 1]
    for owner, (row, col) in zip(owners, dots, strict=True):
        masks[owner, row - r : row + r + 1, col - r : col + r + 1] = True
    return PathfinderExample(image, label, dots, masks, tuple(np.asarray(c, dtype=np.int64) for c in chains), preset)


def generate_pathfinder(
    n: int, seed: int, *, size: int = 32, difficulty: str = "medium", stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Pathfinder images (n, size, size) uint8 and labels (n,) int64 (module docstring).

    Example ``i`` depends only on ``(seed, stream, i)``; labels alternate 1, 0, 1, …
    """
    preset = pathfinder_preset(size, difficulty)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        chains = _layout(seed, stream, i, preset)
        labels[i] = _label(i)
        _draw(images[i], chains, _dots(chains, int(labels[i]), i), preset)
    return images, labels
