"""Exact integer arithmetic (vdmcodec.model.exact): the same bits on every kernel set."""

from __future__ import annotations

import doctest
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import vdmcodec.model.exact as exact


def test_docstring_examples_run():
    assert doctest.testmod(exact, raise_on_error=True).attempted > 0


def random_case(seed: int, bits: int = 12, cin: int = 64, cout: int = 32, size: int = 24):
    g = torch.Generator().manual_seed(seed)
    lim = (1 << (bits - 1)) - 1
    x = torch.randint(-lim, lim + 1, (2, cin, size, size), generator=g).float()
    w = torch.randint(-128, 129, (cout, cin, 3, 3), generator=g).float()
    return x, w


@pytest.mark.parametrize("bits,cin", [(8, 16), (12, 64), (16, 128)])
def test_exact_conv_equals_the_float64_convolution(bits, cin):
    x, w = random_case(bits, bits=bits, cin=cin)
    got = exact.exact_conv2d(x, w, bits=bits, padding=1)
    want = F.conv2d(x.double(), w.double(), padding=1)  # exact: every sum is far below 2^53
    assert got.dtype == torch.int64 and torch.equal(got, want.to(torch.int64))


def test_a_plain_float32_convolution_of_the_same_integers_is_not_exact():
    """Why the limbs: 12-bit inputs and 8-bit weights over 576 inputs overflow float32's
    exact range, and the plain convolution rounds."""
    x, w = random_case(3, bits=12, cin=64)
    x, w = x.abs(), w.abs()  # sums of one sign: they grow past 2^24
    plain = F.conv2d(x, w, padding=1).double()
    assert not torch.equal(plain, F.conv2d(x.double(), w.double(), padding=1))
    assert torch.equal(exact.exact_conv2d(x, w, bits=12, padding=1), F.conv2d(x.double(), w.double(), padding=1).long())


def test_inputs_that_are_not_integers_or_too_wide_are_refused():
    x, w = random_case(4, bits=8, cin=4)
    with pytest.raises(ValueError, match="integer"):
        exact.exact_conv2d(x + 0.5, w, bits=8)
    with pytest.raises(ValueError, match="bits"):
        exact.exact_conv2d(x * 4, w, bits=8)
    with pytest.raises(ValueError):
        exact.limb_bits(fan_in=1 << 20, weight_max=128)


def test_rescale_rounds_halves_away_from_zero():
    acc = torch.tensor([5, 6, 7, 8, -5, -6, -7, -8, 0, 123456789, -123456789])
    got = exact.rescale(acc, multiplier=3, shift=2).tolist()
    want = [int(np.sign(a * 3) * np.floor(abs(a * 3) / 4 + 0.5)) for a in acc.tolist()]
    assert got == want


_DIGEST = """
import hashlib, sys, torch
sys.path.insert(0, {root!r})
from tests.test_exact import random_case
import vdmcodec.model.exact as exact
torch.set_num_threads(int(sys.argv[1]))
x, w = random_case(7, bits=12, cin=64, cout=64, size=48)
if sys.argv[2] == "cl":
    x = x.contiguous(memory_format=torch.channels_last)
out = exact.exact_conv2d(x, w, bits=12, padding=1).contiguous()
print(hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("env,threads,layout", [
    ({}, 2, "nchw"), ({}, 1, "cl"), ({"ATEN_CPU_CAPABILITY": "default"}, 2, "nchw"),
    ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, 1, "nchw"), ({"ATEN_CPU_CAPABILITY": "avx2"}, 2, "cl"),
])
def test_the_same_bits_under_every_kernel_set_thread_count_and_layout(env, threads, layout):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    x, w = random_case(7, bits=12, cin=64, cout=64, size=48)
    want = hashlib.sha256(exact.exact_conv2d(x, w, bits=12, padding=1).contiguous().numpy().tobytes()).hexdigest()
    out = subprocess.run([sys.executable, "-c", _DIGEST.format(root=root), str(threads), layout],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == want
