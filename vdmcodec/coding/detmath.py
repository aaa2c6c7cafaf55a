"""exp, log and their kin in float64 from IEEE-754 basic operations only: the same bits on
every correct machine (issue 18's exact path).

numpy's np.exp, np.log, np.tanh dispatch to different SIMD implementations on different CPUs
(AVX-512, AVX2, baseline, NEON), which may differ in the last bit; a probability derived
from them can then differ between the machine that wrote a file and the one that reads it.
These functions use only +, -, *, /, floor, frexp and ldexp (each exact or correctly rounded
by the standard) in a fixed order, with classic range reductions (fdlibm's split of ln 2)
and polynomials: within 2 ulp of the true values (the tests measure it).

Each is one scalar Python function, so one source has two executions that must agree bit for
bit: plain CPython (the readable specification) and numba, which compiles it without
fast-math into parallel loops (the fast path; `numba` is a dependency); the compiled exp is a
branch-free twin of the scalar one that LLVM vectorises, held to it bit for bit by the tests.

>>> [round(float(v), 12) for v in exp(np.array([0.0, 1.0, -2.5]))]
[1.0, 2.718281828459, 0.082084998624]
>>> float(log(np.array([np.e]))[0])
1.0
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
    import numba.extending
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the spec importable
    numba = None

LN2_HI = 6.93147180369123816490e-01  # ln 2 with its low 32 bits zero: n * LN2_HI is exact for |n| < 2^20
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
SQRT_HALF = 0.70710678118654752440
EXP_MAX, EXP_MIN = 709.782712893384, -745.1332191019411
# 1/k! for k = 13 .. 2 (Horner order), and 1/(2k+1) for k = 10 .. 1
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(13, 1, -1))
_INV_ODD = tuple(1.0 / (2 * k + 1) for k in range(10, 0, -1))


def _jitable(f):
    """A plain Python function that numba can also compile into the kernels below."""
    return numba.extending.register_jitable(f) if numba is not None else f


@_jitable
def _exp_reduced(x):
    """(e^r, n) with x = n ln2 + r, |r| <= ln2 / 2: e^r by its Taylor series to r^13."""
    n = math.floor(x * INV_LN2 + 0.5)
    r = (x - n * LN2_HI) - n * LN2_LO
    p = _INV_FACT[0]
    for c in _INV_FACT[1:]:
        p = p * r + c
    return (p * r + 1.0) * r + 1.0, n


@_jitable
def exp_scalar(x):
    """e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^13, times 2^n."""
    if x != x:
        return x
    if x > EXP_MAX:
        return math.inf
    if x < EXP_MIN:
        return 0.0
    p, n = _exp_reduced(x)
    return math.ldexp(p, int(n))


@_jitable
def _log_reduced(m, e):
    """ln(m 2^e) for m in [sqrt(1/2), sqrt(2)): 2 atanh(s), s = (m - 1)/(m + 1), by its series
    in s^2 to s^21, plus e ln 2 in two parts."""
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    q = _INV_ODD[0]
    for c in _INV_ODD[1:]:
        q = q * z + c
    two_s = 2.0 * s
    return e * LN2_HI + (two_s + (two_s * (q * z) + e * LN2_LO))


@_jitable
def log_scalar(x):
    """ln x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m - 1)/(m + 1),
    by its series in s^2 to s^21."""
    if x != x or x < 0.0:
        return math.nan
    if x == 0.0:
        return -math.inf
    if x == math.inf:
        return x
    m, e = math.frexp(x)
    if m < SQRT_HALF:
        m = m * 2.0
        e = e - 1
    return _log_reduced(m, float(e))


@_jitable
def log1p_scalar(x):
    """ln(1 + x), accurate for small x: ln(u) x / (u - 1) with u = 1 + x rounded."""
    u = 1.0 + x
    if u == 1.0:
        return x
    if u == math.inf:
        return u
    return log_scalar(u) * (x / (u - 1.0))


@_jitable
def expm1_scalar(x):
    """e^x - 1, accurate for small x (Taylor series to x^13 below ln2 / 2)."""
    if -0.34657359 < x < 0.34657359:
        p = _INV_FACT[0]
        for c in _INV_FACT[1:]:
            p = p * x + c
        return (p * x + 1.0) * x
    return exp_scalar(x) - 1.0


@_jitable
def tanh_scalar(x):
    a = abs(x)
    if a > 22.0:
        t = 1.0
    else:
        e = expm1_scalar(-2.0 * a)
        t = -e / (2.0 + e)
    return t if x >= 0.0 else -t


@_jitable
def sigmoid_scalar(x):
    return 1.0 / (1.0 + exp_scalar(-x))


@_jitable
def softplus_scalar(x):
    """ln(1 + e^x) (numpy's logaddexp(0, x))."""
    return max(x, 0.0) + log1p_scalar(exp_scalar(-abs(x)))


_FUNCTIONS = ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus")  # _loop's `which` order
SCALARS = {"exp": exp_scalar, "log": log_scalar, "log1p": log1p_scalar, "expm1": expm1_scalar,
           "tanh": tanh_scalar, "sigmoid": sigmoid_scalar, "softplus": softplus_scalar}


def spec(name: str, x) -> np.ndarray:
    """The specification: the scalar function run by CPython on every element (slow)."""
    f = SCALARS[name]
    arr = np.asarray(x, dtype=np.float64)
    return np.fromiter((f(float(v)) for v in arr.ravel()), dtype=np.float64, count=arr.size).reshape(arr.shape)


if numba is not None:
    # powers of two 2^k, k = -1000 .. 1023, for the compiled exp's scaling
    _POW2 = np.array([math.ldexp(1.0, k) for k in range(-1000, 1024)])

    @numba.njit(inline="always", cache=True)
    def _exp_simd(x):
        """exp_scalar's twin without branches or calls, which LLVM vectorises: the same
        operations on in-range x, and p 2^n as (p 2^k1) 2^(n - k1) with k1 = n clipped to
        [-1000, 1023], one exact product and one correctly rounded one, as ldexp rounds.
        The tests hold it to exp_scalar bit for bit."""
        p, n = _exp_reduced(min(max(x, -746.0), 710.0))
        k = int(n)
        k1 = min(max(k, -1000), 1023)
        out = (p * _POW2[k1 + 1000]) * _POW2[k - k1 + 1000]
        if x > EXP_MAX:
            out = math.inf
        if x < EXP_MIN:
            out = 0.0
        if x != x:
            out = x
        return out

    @numba.njit(inline="always", cache=True)
    def _log1p_unit_simd(t):
        """log1p_scalar(t) for t in [0, 1] without calls: u = 1 + t lies in [1, 2], where
        frexp's split is known (u < 2 sqrt(1/2): m = u, e = 0; else m = u / 2, e = 1), then
        log_scalar's operations."""
        u = 1.0 + t
        low = u < 2.0 * SQRT_HALF
        m = u if low else u * 0.5
        e = 0.0 if low else 1.0
        lg = _log_reduced(m, e)
        return t if u == 1.0 else lg * (t / (u - 1.0))

    # one parallel loop for all (numba's parallel ufuncs do not vectorise); `which` is the
    # same for every element, so LLVM hoists the choice out of the loop
    @numba.njit(parallel=True, cache=True)
    def _loop(which, x, out):
        for i in numba.prange(x.shape[0]):
            v = x[i]
            if which == 0:
                out[i] = _exp_simd(v)
            elif which == 1:
                out[i] = log_scalar(v)
            elif which == 2:
                out[i] = log1p_scalar(v)
            elif which == 3:
                out[i] = expm1_scalar(v)
            elif which == 4:
                out[i] = tanh_scalar(v)
            elif which == 5:
                out[i] = 1.0 / (1.0 + _exp_simd(-v))
            else:
                out[i] = max(v, 0.0) + _log1p_unit_simd(_exp_simd(-abs(v)))


def _apply(name: str, x) -> np.ndarray:
    if numba is None:
        return spec(name, x)
    arr = np.asarray(x, dtype=np.float64)  # the input's shape kept, 0-d included
    out = np.empty(arr.shape)
    _loop(_FUNCTIONS.index(name), np.ascontiguousarray(arr).reshape(-1), out.reshape(-1))
    return out


def _public(name: str):
    def f(x) -> np.ndarray:
        return _apply(name, x)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"{name} of a float64 array (or scalar), elementwise; the shape is kept."
    return f


exp, log, log1p, expm1, tanh, sigmoid, softplus = (_public(n) for n in _FUNCTIONS)
