"""The elementwise steps of the exact network, as numpy float32 code (the specification) and as
fused numba kernels that give the same bits (the fast path).

Each step is a fixed sequence of IEEE-754 float32 additions, multiplications, divisions,
comparisons and round-to-nearest-even: every correct machine rounds each of them the same
way, so any implementation that performs the same operations in the same order (no fused
multiply-add, no reassociation) gets the same bits.  numba compiles without fast-math, so
LLVM neither contracts nor reorders them; the tests check the kernels against this numpy
code.  Without numba the numpy code runs instead (same bits, slower).

SiLU is x sigma(x) = x/2 + (|x|/2) tanh(|x|/2), with tanh as the rational function used
by Eigen for float32 (a degree-13 odd numerator over a degree-6 even denominator, argument
clamped at 7.9053, where tanh is 1 in float32): within 3e-6 of SiLU everywhere.

>>> import numpy as np
>>> x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0, 20.0], dtype=np.float32)
>>> [round(float(v), 5) for v in silu(x)]
[-0.14228, -0.18877, 0.0, 0.31123, 2.85772, 20.0]
"""

from __future__ import annotations

import numpy as np

try:  # the fast path; the numpy code below gives the same bits
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

F32 = np.float32
TANH_NUM = np.array([4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                     -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16], dtype=F32)
TANH_DEN = np.array([4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06],
                    dtype=F32)
TANH_CLAMP = F32(7.90531110763549805)
HALF = F32(0.5)


# ---- the specification: numpy float32, one operation at a time ----
def silu(v: np.ndarray) -> np.ndarray:
    """float32 SiLU of float32 v, by the rational tanh above."""
    hx = np.abs(v) * HALF
    y = np.minimum(hx, TANH_CLAMP)
    y2 = y * y
    p = y2 * TANH_NUM[6] + TANH_NUM[5]
    for c in TANH_NUM[4::-1]:
        p = p * y2 + c
    q = y2 * TANH_DEN[3] + TANH_DEN[2]
    for c in TANH_DEN[1::-1]:
        q = q * y2 + c
    return v * HALF + hx * (y * p / q)


def quantise(s: np.ndarray, mult: np.float32, in_max: np.float32) -> np.ndarray:
    """Input levels of a convolution: clamp(rint(s * mult), -in_max, in_max) (a product that
    overflows to infinity clamps like any other)."""
    with np.errstate(over="ignore"):
        return np.minimum(np.maximum(np.rint(s * mult), -in_max), in_max)


def affine(y: np.ndarray, m: np.ndarray, o: np.ndarray) -> np.ndarray:
    """y * m + o, float32, m and o broadcast along y's channel axis."""
    return y * m + o


def act_np(h, mult, in_max):
    return quantise(silu(h), mult, in_max)


def affine_act_np(y, m, o, mult, in_max):
    return quantise(silu(affine(y, m, o)), mult, in_max)


def affine_add_np(y, m, o, x):
    return x + affine(y, m, o)


# ---- the fast path: the same operations fused into one pass, channels last ----
if numba is not None:
    _NUM, _DEN = TANH_NUM, TANH_DEN

    @njit(inline="always", cache=True)
    def _silu1(v):
        hx = abs(v) * HALF
        y = min(hx, TANH_CLAMP)
        y2 = y * y
        p = y2 * _NUM[6] + _NUM[5]
        p = p * y2 + _NUM[4]
        p = p * y2 + _NUM[3]
        p = p * y2 + _NUM[2]
        p = p * y2 + _NUM[1]
        p = p * y2 + _NUM[0]
        q = y2 * _DEN[3] + _DEN[2]
        q = q * y2 + _DEN[1]
        q = q * y2 + _DEN[0]
        return v * HALF + hx * (y * p / q)

    @njit(inline="always", cache=True)
    def _quant1(s, mult, in_max):
        a = np.rint(s * mult)
        return min(max(a, -in_max), in_max)

    # outputs are (groups, rows, channels / groups): each group of input channels of the
    # next convolution contiguous in channels-last order
    @njit(parallel=True, cache=True)
    def _act_nb(h, mult, in_max, out):
        groups, n, cg = out.shape
        for i in prange(n):
            for g in range(groups):
                for j in range(cg):
                    out[g, i, j] = _quant1(_silu1(h[i, g * cg + j]), mult, in_max)

    @njit(parallel=True, cache=True)
    def _affine_act_nb(y, m, o, mult, in_max, out):
        groups, n, cg = out.shape
        for i in prange(n):
            for g in range(groups):
                for j in range(cg):
                    k = g * cg + j
                    out[g, i, j] = _quant1(_silu1(y[i, k] * m[k] + o[k]), mult, in_max)

    @njit(parallel=True, cache=True)
    def _affine_nb(y, m, o, out):
        n, c = y.shape
        for i in prange(n):
            for k in range(c):
                out[0, i, k] = y[i, k] * m[k] + o[k]

    @njit(parallel=True, cache=True)
    def _affine_add_nb(y, m, o, x, out):
        n, c = y.shape
        for i in prange(n):
            for k in range(c):
                out[0, i, k] = x[i, k] + (y[i, k] * m[k] + o[k])
