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
