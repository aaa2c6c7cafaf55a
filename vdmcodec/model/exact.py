"""Integer arithmetic that gives the same bits on every correct machine (issue 18's bricks).

A float32 sum of integers is exact whatever the order, blocking, thread count or SIMD width,
as long as every partial sum stays below 2^24 in magnitude.  So a convolution of
integer-valued float32 tensors is exact when sum |w| |x| < 2^24 for every output; wider
inputs are split into limbs of a few bits, each convolved exactly, and the limbs are added
in int64 in a fixed order.  Rescaling is an int64 multiply and a rounding shift.  These are
the pieces an exact network is built from (docs/DESIGN.md, "The exact path"); nothing on the
coding path uses them yet.

>>> x = torch.tensor([[[[1000.0, -2000.0, 4095.0]]]])
>>> w = torch.tensor([[[[127.0, -128.0, 5.0]]]])
>>> exact_conv2d(x, w, bits=13).tolist()
[[[[403475]]]]
>>> rescale(torch.tensor([403475]), multiplier=3, shift=4).tolist()
[75652]
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

FLOAT32_EXACT = 1 << 24  # every integer of smaller magnitude is a float32, and so is every partial sum below it


def limb_bits(fan_in: int, weight_max: int) -> int:
    """The widest unsigned limb (bits) whose convolution with |w| <= weight_max over fan_in
    inputs keeps every partial sum exact in float32."""
    bits = 0
    while fan_in * weight_max * ((1 << (bits + 1)) - 1) < FLOAT32_EXACT:
        bits += 1
    if bits == 0:
        raise ValueError(f"no limb is exact for fan-in {fan_in} and weights up to {weight_max}")
    return bits


def exact_conv2d(x: torch.Tensor, w: torch.Tensor, bits: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """conv2d of integer-valued float32 tensors, exactly, as int64.

    x: (B, Cin, H, W) integers with |x| < 2^(bits-1) (two's complement range of `bits`);
    w: (Cout, Cin, k, k) integers with |w| <= 128.  x is split into its sign and unsigned
    limbs narrow enough for limb_bits; each limb's convolution is exact in float32 and the
    limbs are combined in int64, low limb first."""
    if not (torch.equal(x, torch.round(x)) and torch.equal(w, torch.round(w))):
        raise ValueError("exact_conv2d takes integer-valued tensors")
    if x.abs().max() >= (1 << (bits - 1)) or w.abs().max() > 128:
        raise ValueError(f"inputs exceed {bits} bits or weights exceed 8 bits")
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    step = limb_bits(fan_in, 128)
    mag = x.abs().to(torch.int64)
    sign = torch.sign(x)
    out = None
    for shift in range(0, bits - 1, step):
        limb = ((mag >> shift) & ((1 << step) - 1)).to(torch.float32) * sign
        part = F.conv2d(limb, w.to(torch.float32), stride=stride, padding=padding).to(torch.int64) << shift
        out = part if out is None else out + part
    return out


def rescale(acc: torch.Tensor, multiplier: int, shift: int) -> torch.Tensor:
    """round(acc * multiplier / 2^shift), halves away from zero, in int64: exact everywhere.
    acc * multiplier must stay below 2^62."""
    prod = acc.to(torch.int64) * int(multiplier)
    if shift == 0:
        return prod
    half = 1 << (shift - 1)
    return torch.where(prod >= 0, (prod + half) >> shift, -((-prod + half) >> shift))
