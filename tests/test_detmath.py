"""Deterministic transcendentals (vdmcodec.coding.detmath): compiled equals the CPython
specification bit for bit, and both are within a few ulp of the true values."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from vdmcodec.coding import detmath

SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e-17, -1e-17, 0.5, 1.0, -1.0, 2.0, 0.34657359, -0.34657359,
           22.0, -22.0, 700.0, 709.78, 709.79, -745.13, -746.0, 1e308, -1e308, math.inf, -math.inf, math.nan]
REFERENCE = {"exp": math.exp, "log": math.log, "log1p": math.log1p, "expm1": math.expm1, "tanh": math.tanh,
             "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)), "softplus": lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))}
DOMAIN = {"exp": (-745.0, 709.0), "log": (1e-300, 1e300), "log1p": (-0.999, 1e6), "expm1": (-40.0, 40.0),
          "tanh": (-25.0, 25.0), "sigmoid": (-40.0, 40.0), "softplus": (-40.0, 40.0)}


def test_docstring_examples_run():
    assert doctest.testmod(detmath, raise_on_error=True).attempted > 0


def _samples(name: str, n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(len(name))
    lo, hi = DOMAIN[name]
    if name == "log":
        wide = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    else:
        wide = rng.uniform(lo, hi, n)
    return np.concatenate([wide, rng.uniform(-1.0, 1.0, n) * (lo < 0 or name == "log") + (name == "log") * 1.0,
                           rng.uniform(-1e-8, 1e-8, 200) + (name == "log") * 1.0])


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_compiled_ufunc_gives_the_specifications_bits(name):
    with np.errstate(all="ignore"):
        x = np.concatenate([_samples(name), SPECIAL])
        fast = getattr(detmath, name)(x)
    want = detmath.spec(name, x)
    assert np.array_equal(np.isnan(fast), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(fast[ok].view(np.int64), want[ok].view(np.int64))  # signed zeros too


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_within_four_ulp_of_the_platform_library(name):
    x = _samples(name)
    got = getattr(detmath, name)(x)
    want = np.array([REFERENCE[name](float(v)) for v in x])
    ulp = np.abs(got - want) / np.spacing(np.abs(want))
    assert float(ulp.max()) <= 4.0


def test_edges():
    assert detmath.exp(np.array([-746.0, 710.0])).tolist() == [0.0, math.inf]
    assert np.isnan(detmath.log(np.array([-1.0]))[0]) and detmath.log(np.array([0.0]))[0] == -math.inf
    assert detmath.tanh(np.array([-30.0, 30.0])).tolist() == [-1.0, 1.0]
    assert detmath.expm1(np.array([-0.0]))[0] == 0.0


def test_the_vectorised_twins_match_the_specification_on_their_edges():
    """The compiled exp scales by two powers of two (subnormal results, overflow) and softplus
    splits log1p's argument in [1, 2] at 2 sqrt(1/2) without frexp: dense samples there."""
    rng = np.random.default_rng(7)
    tiny = np.linspace(-745.2, -700.0, 200001)  # results from 0 through subnormals to normal
    huge = np.linspace(700.0, 709.9, 20001)
    split = -np.log(np.sqrt(2.0) - 1.0) + np.linspace(-1e-6, 1e-6, 20001)  # e^-|x| near sqrt(2) - 1
    wide = rng.uniform(-60.0, 60.0, 100000)
    for name, x in (("exp", np.concatenate([tiny, huge, wide])), ("sigmoid", np.concatenate([-tiny, wide])),
                    ("softplus", np.concatenate([split, -split, wide, rng.uniform(-1e-3, 1e-3, 20000)]))):
        with np.errstate(all="ignore"):
            got, want = getattr(detmath, name)(x), detmath.spec(name, x)
        assert np.array_equal(got.view(np.int64), want.view(np.int64)), name


def test_shapes_are_kept():
    assert detmath.exp(np.float64(1.0)).shape == () and detmath.tanh(np.zeros((2, 3, 4))).shape == (2, 3, 4)
    assert detmath.log(np.ones((3, 5))[:, ::2]).shape == (3, 3)


def test_arith_docstring_examples_run():
    from vdmcodec.coding import arith
    assert doctest.testmod(arith, raise_on_error=True).attempted > 0


def test_exact_row_sums_add_left_to_right():
    from vdmcodec.coding.arith import EXACT
    probs = np.random.default_rng(9).random((50, 37))
    want = probs[:, :1].copy()
    for k in range(1, 37):
        want = want + probs[:, k : k + 1]
    assert np.array_equal(EXACT.row_sum(probs), want)


@pytest.mark.parametrize("width", [1, 7, 33, 256])
def test_the_fused_logistic_table_gives_the_specifications_bits(width):
    """The pixel decoder's probability tables in exact arithmetic: the compiled loop equals the
    numpy specification bit for bit, tails at levels 0 and 255 and wild scales included."""
    from vdmcodec.coding.arith import EXACT, logistic_table_spec
    rng = np.random.default_rng(width)
    n = 3000
    loc = np.concatenate([rng.uniform(-20.0, 275.0, n), [0.0, 255.0, -0.5, 254.5, 127.5]])
    scale = np.concatenate([np.exp(rng.uniform(-6.0, 5.0, n)), [1e-3, 0.5, 1.0, 60.0, 2.0**-24]])
    offset = np.clip(np.rint(loc).astype(np.int64) - width // 2, 0, 256 - width)
    fast = EXACT.logistic_table(loc, scale, offset, width)
    spec = logistic_table_spec(EXACT, loc, scale, offset, width)
    assert fast.shape == (n + 5, width) and fast.dtype == np.float64
    assert np.array_equal(fast.view(np.uint64), spec.view(np.uint64))
