"""Small signed integers (an image's fitted side data, int8 steps) as Golomb-Rice codes.

An image's own pixel-context weights are sent as int8 steps away from the model's; most of
those steps are small (half of the linear weights' are 0), so a byte each wastes about half
the section.  Each part gets the Rice parameter k (0-7) that makes it shortest: a value v
maps to u = 2v (v >= 0) or -2v - 1 (v < 0), written as u >> k in unary (ones, then a zero)
and the low k bits of u.  Integer operations only: every machine packs and unpacks the
same bits.  The part sizes are not stored: the reader knows them (the model's layout).

>>> parts = [np.array([0, 0, 1, -1, 0, 2]), np.array([40, -37, 12])]
>>> blob = pack_parts(parts)
>>> len(blob), [p.tolist() for p in unpack_parts(blob, [6, 3])]
(6, [[0, 0, 1, -1, 0, 2], [40, -37, 12]])
"""

from __future__ import annotations

import numpy as np

MAX_K = 7  # values are int8 steps: zigzagged they are below 256
K_BITS = 3


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    if v.size and (v.min() < -128 or v.max() > 127):
        raise ValueError("Rice parts hold int8 values")
    return np.where(v >= 0, 2 * v, -2 * v - 1)


def _best_k(u: np.ndarray) -> int:
    costs = [int((u >> k).sum()) + u.size * (1 + k) for k in range(MAX_K + 1)]
    return int(np.argmin(costs))


def pack_parts(parts: list[np.ndarray]) -> bytes:
    """Each part's k (3 bits), then its values' codes; zero bits pad the last byte."""
    bits: list[int] = []
    for part in parts:
        u = _zigzag(part).ravel()
        k = _best_k(u) if u.size else 0
        bits += [(k >> b) & 1 for b in range(K_BITS - 1, -1, -1)]
        for x in u.tolist():
            bits += [1] * (x >> k) + [0] + [(x >> b) & 1 for b in range(k - 1, -1, -1)]
    bits += [0] * (-len(bits) % 8)
    return np.packbits(np.array(bits, dtype=np.uint8)).tobytes() if bits else b""


def unpack_parts(blob: bytes, sizes: list[int]) -> list[np.ndarray]:
    """The parts of pack_parts, of these sizes; ValueError if the blob is not exactly such a
    stream (too short, or more than padding left over)."""
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8)).tolist()
    pos, out = 0, []

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError("Rice stream ends early")
        v = 0
        for b in bits[pos : pos + n]:
            v = (v << 1) | b
        pos += n
        return v

    for size in sizes:
        k = take(K_BITS)
        vals = np.empty(size, dtype=np.int64)
        for i in range(size):
            q = 0
            while take(1):
                q += 1
                if q > 255 >> k:
                    raise ValueError("Rice code out of range")
            vals[i] = (q << k) | take(k)
        out.append(np.where(vals % 2 == 0, vals // 2, -(vals + 1) // 2))
    if len(bits) - pos >= 8 or any(bits[pos:]):
        raise ValueError("Rice stream has bytes left over")
    return out
