"""Which row bands of an image a classic code (JPEG XL) takes instead of the bits-back chain.

A photograph is rarely all of one kind: a calm sky or still water that JPEG XL codes well
sits above foliage or cloth that the model codes better.  The chain codes row regions and
already pushes a classic code of its first rows (the seed) onto the stack, and the decoder
reads a classic region anywhere in an image's layout, so the encoder may hand any band of
rows to the classic code: its bytes go onto the stack like the seed's (and pay for the
latents the next region pops), and the region above it sees its rows as context.

The choice: the model's bits per row as estimated before the chain (coding.estimate), and
JPEG XL at effort 9 on each band of BAND_ROWS rows on its own; a band goes classic where its
JPEG XL code is smaller, and each run of adjacent classic bands becomes one strip (a
StripPlan, priced at its bands' effort-9 bits), coded with coding.classic.encode_rows at the
whole-image effort (code_strips) only once the chain is to run.  On seven training photographs
(768x512 crops, benchmarks/experiments/band_choice, the model's NELBO per row) this choice
with bands of 64 rows came 0.35-1.8% below the smaller of the whole-image JPEG XL file and
the model's NELBO on four and gained nothing on three (bands of 32 or 128 rows won on some,
lost on others).  As coded (benchmarks/experiments/skip_estimate on 12 training crops, session
17): the bits-back files 0-2.9% smaller, 1.0% on average, and 4 of the 12 files smaller by
0.27-1.5%.

>>> runs_of([False, True, True, False, True])
[(1, 3), (4, 5)]
"""

from __future__ import annotations

from dataclasses import dataclass

import imagecodecs
import numpy as np

from .classic import JXL_IMAGE_SETTINGS, encode_rows

BAND_ROWS = 64  # the unit of the choice: even, so every band and region starts at an even row
BAND_EFFORT = 9  # JPEG XL effort of the per-band sizes that decide (effort 10: 0.6% smaller, 2.7x the time)
MIN_BAND_IMAGE_ROWS = 2 * BAND_ROWS  # shorter images: all of one kind


@dataclass(frozen=True)
class ClassicStrip:
    """Rows [r0, r1) coded classically inside a bits-back image."""

    rows: tuple[int, int]
    codec: str
    data: bytes  # tagged as coding.classic.encode_rows makes it

    @property
    def bits(self) -> float:
        return 8.0 * len(self.data)


def runs_of(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of True in flags."""
    runs, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def band_sums(row_bits: np.ndarray, band: int = BAND_ROWS) -> np.ndarray:
    """Bits per row summed over each band of `band` rows (the last band may be shorter).

    >>> band_sums(np.arange(6.0), band=4)
    array([6., 9.])
    """
    return np.add.reduceat(row_bits, np.arange(0, len(row_bits), band))


def band_bits(x: np.ndarray, band: int = BAND_ROWS, effort: int = BAND_EFFORT) -> np.ndarray:
    """Bits of JPEG XL (lossless, this effort) on each band of `band` rows of x (C, H, W) uint8."""
    h = x.shape[1]
    out = []
    for r0 in range(0, h, band):
        part = x[0, r0 : r0 + band] if x.shape[0] == 1 else np.ascontiguousarray(x[:, r0 : r0 + band].transpose(1, 2, 0))
        out.append(8.0 * len(imagecodecs.jpegxl_encode(part, lossless=True, effort=effort)))
    return np.array(out)


@dataclass(frozen=True)
class StripPlan:
    """Rows [r0, r1) that go to the classic code, with the bits of their bands' effort-9
    codes (what decided; the strip itself is coded later, by code_strips, only if the chain runs)."""

    rows: tuple[int, int]
    bits: float


def plan_strips(x: np.ndarray | None, model_row_bits: np.ndarray, band: int = BAND_ROWS,
                classic_bits: np.ndarray | None = None) -> list[StripPlan]:
    """The classic strips of x (C, H, W) uint8, given the model's estimated bits per row;
    [] where the image is too short or no band is cheaper classic.  classic_bits: band_bits
    of x where they were computed already (then x may be None)."""
    h = len(model_row_bits)
    if h < MIN_BAND_IMAGE_ROWS or (x is not None and x.shape[1] != h):
        return []
    model = band_sums(model_row_bits, band)
    classic = band_bits(x, band) if classic_bits is None else classic_bits
    return [StripPlan((b0 * band, min(h, b1 * band)), float(classic[b0:b1].sum()))
            for b0, b1 in runs_of(list(classic < model))]


def code_strips(x: np.ndarray, plans: list[StripPlan]) -> list[ClassicStrip]:
    """The planned strips of x (C, H, W) uint8, coded at the whole-image JPEG XL efforts."""
    # no WebP: at method 6 it takes seconds, and JPEG XL codes photographs' strips about 11%
    # smaller (coding.classic)
    return [ClassicStrip(p.rows, *encode_rows(x[:, p.rows[0]:p.rows[1]], webp_max_pixels=0,
                                              jxl_table=JXL_IMAGE_SETTINGS)) for p in plans]


def mixed_bits(model_row_bits: np.ndarray, strips: list[StripPlan]) -> float:
    """The model's bits on the rows no strip takes plus the strips' (planned) bits."""
    keep = np.ones(len(model_row_bits), dtype=bool)
    for s in strips:
        keep[s.rows[0] : s.rows[1]] = False
    return float(model_row_bits[keep].sum()) + sum(s.bits for s in strips)
