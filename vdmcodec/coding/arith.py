"""The transcendental arithmetic of the coder's distributions: "float" (numpy's, as every file
before format 6 was written) or "exact1" (detmath's, the same bits on every machine).

Everything else the coder computes is IEEE basic operations in a fixed order; these few
functions are the rest.  A StepModel, its grids and its pixel codecs all take one of the two.

>>> FLOAT.name, EXACT.name
('float', 'exact1')
>>> float(EXACT.row_sum(np.array([[0.25, 0.5, 0.125]]))[0, 0])
0.875
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import detmath

Fn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Arith:
    name: str
    exp: Fn
    log: Fn
    tanh: Fn
    log1p: Fn
    expm1: Fn
    softplus: Fn  # log(1 + e^x)
    scalar_exp: Callable[[float], float]
    row_sum: Fn  # (N, K) -> (N, 1): the sum of each row

    def sigmoid_diff(self, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """sigmoid(upper) - sigmoid(lower), computed on the side nearer zero for accuracy."""
        flip = (upper + lower) > 0
        u = np.where(flip, -lower, upper)
        lo = np.where(flip, -upper, lower)
        with np.errstate(over="ignore", invalid="ignore"):
            su = 1.0 / (1.0 + self.exp(-u))
            sl = 1.0 / (1.0 + self.exp(-lo))
        return np.maximum(su - sl, 0.0)

    def logistic_table(self, loc: np.ndarray, scale: np.ndarray, offset: np.ndarray, width: int) -> np.ndarray:
        """Probability tables (N, width) float64 of discretised logistics: row n over the
        levels offset[n] .. offset[n] + width - 1 with location loc[n] and scale scale[n]
        (levels 0 and 255 take the tails), each entry snapped to 2^-40 plus 2^-40, rows
        normalised.  In exact arithmetic one fused compiled loop computes logistic_table_spec's
        operations in its order (the tests hold the two to the same bits): no temporaries,
        both cores, several times faster on a region's pixels."""
        if self is EXACT and _logistic_table_exact is not None:
            out = np.empty((len(loc), width))
            _logistic_table_exact(np.ascontiguousarray(loc, dtype=np.float64),
                                  np.ascontiguousarray(scale, dtype=np.float64),
                                  np.ascontiguousarray(offset, dtype=np.int64), out)
            return out
        return logistic_table_spec(self, loc, scale, offset, width)


TABLE_SNAP = 2.0**-40  # the tables' grid


def logistic_table_spec(arith: Arith, loc: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                        width: int) -> np.ndarray:
    """Arith.logistic_table in numpy: the specification, and the float arithmetic's path."""
    levels = offset[:, None] + np.arange(width)[None, :]
    upper = np.where(levels >= 255, np.inf, (levels + 0.5 - loc[:, None]) / scale[:, None])
    lower = np.where(levels <= 0, -np.inf, (levels - 0.5 - loc[:, None]) / scale[:, None])
    probs = arith.sigmoid_diff(upper, lower)
    probs = np.rint(probs / TABLE_SNAP) * TABLE_SNAP + TABLE_SNAP  # grids.snap's rounding (grids imports arith)
    return probs / arith.row_sum(probs)


def _row_sum_in_order(probs: np.ndarray) -> np.ndarray:
    """Row sums added column by column, left to right: numpy's own sum groups the terms by
    the CPU's SIMD width, so its last bit may differ between machines."""
    out = probs[:, 0:1].copy()
    for k in range(1, probs.shape[1]):
        out = out + probs[:, k : k + 1]
    return out


FLOAT = Arith("float", np.exp, np.log, np.tanh, np.log1p, np.expm1, lambda x: np.logaddexp(0.0, x), math.exp,
              lambda p: p.sum(1, keepdims=True))
EXACT = Arith("exact1", detmath.exp, detmath.log, detmath.tanh, detmath.log1p, detmath.expm1, detmath.softplus,
              lambda x: float(detmath.exp(np.array([x]))[0]), _row_sum_in_order)
ARITHS = {a.name: a for a in (FLOAT, EXACT)}

if detmath.numba is not None:
    import numba

    from .detmath import _exp_simd

    @numba.njit(parallel=True, cache=True, error_model="numpy")
    def _logistic_table_exact(loc, scale, offset, out):
        """logistic_table_spec with EXACT, row by row: the same IEEE operations in the same
        order (sigmoid_diff's side choice, the snap, the row sum left to right)."""
        width = out.shape[1]
        for n in numba.prange(loc.shape[0]):
            total = 0.0
            for k in range(width):
                level = offset[n] + k
                upper = (level + 0.5 - loc[n]) / scale[n]
                lower = (level - 0.5 - loc[n]) / scale[n]
                if level >= 255:
                    upper = math.inf
                if level <= 0:
                    lower = -math.inf
                u, lo = upper, lower
                if upper + lower > 0:
                    u, lo = -lower, -upper
                su = 1.0 / (1.0 + _exp_simd(-u))
                sl = 1.0 / (1.0 + _exp_simd(-lo))
                p = max(su - sl, 0.0)
                p = np.rint(p / TABLE_SNAP) * TABLE_SNAP + TABLE_SNAP
                out[n, k] = p
                total = p if k == 0 else total + p
            for k in range(width):
                out[n, k] = out[n, k] / total
else:  # pragma: no cover - numba is a dependency; logistic_table then runs the specification
    _logistic_table_exact = None
