"""Where the coder's overhead comes from: the exact stack growth of each kind of coder call
against the ideal code length the encoder's accounting assumes, for one region.

    python -m benchmarks.overhead ../shared/data/kodak/kodim01.png --box 200 300 32 64

Q pops remove -log2 Qq(k) bits for a latent k drawn from the coder's quantised Qq, while the
accounting counts -log2 Q(k) of the exact Gaussian cell mass: the difference has mean
KL(Qq || Q) >= 0.  P pushes cost -log2 Pq(k) against -log2 P(k), which can go either way:
the coder gives every symbol of a window at least 2^-PRECISION_BITS, so a latent far in P's
tail costs less than its ideal (`beyond_precision` counts them; `..._excess_bits` is what
the accounting charges beyond the cap).  `mass_outside_window_bits`: what P loses outside
its coding windows (a truncated P, renormalised, also codes better than the accounting says).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding import chain
from vdmcodec.coding.ans import PRECISION_BITS, AnsStack, Codec
from vdmcodec.coding.steps import StepModel
from vdmcodec.image_io import load_image


def instrument(sm: StepModel, stats: dict) -> None:
    """Wrap sm's Q and P codecs so that each push and pop records exact and ideal bits."""

    def wrap(kind: str, make, step_arg: bool):
        def build(*args, **kwargs):
            codec, mean, std = make(*args, **kwargs)
            half = int(sm.grids.p_half[args[1]]) if step_arg else None
            rec = stats[kind]

            def push(stack: AnsStack, symbols: np.ndarray) -> None:
                before = stack.num_valid_bits()
                codec.push(stack, symbols)
                rec["exact"] += stack.num_valid_bits() - before
                rec["ideal"] += chain.gaussian_bits(symbols.reshape(-1), mean, std)
                rec["count"] += symbols.size
                bits = chain.gaussian_symbol_bits(symbols, mean, std)
                far = bits > PRECISION_BITS
                rec["beyond_precision"] += int(far.sum())
                rec["beyond_precision_excess_bits"] += float((bits[far] - PRECISION_BITS).sum())
                if half is not None:
                    centre = np.rint(mean)
                    hi = torch.special.ndtr(torch.from_numpy((centre + half + 0.5 - mean) / std))
                    lo = torch.special.ndtr(torch.from_numpy((centre - half - 0.5 - mean) / std))
                    rec["mass_outside_window_bits"] += -float(torch.log2(hi - lo).sum())

            def pop(stack: AnsStack) -> np.ndarray:
                before = stack.num_valid_bits()
                symbols = codec.pop(stack)
                rec["exact"] += stack.num_valid_bits() - before
                rec["ideal"] -= chain.gaussian_bits(symbols.reshape(-1), mean, std)
                rec["count"] += symbols.size
                return symbols

            return Codec(push, pop), mean, std

        return build

    sm.q_forward = wrap("q_pop", sm.q_forward, False)
    sm.p_reverse = wrap("p_push", sm.p_reverse, True)
    sm.q_z0 = wrap("q_z0_pop", sm.q_z0, False)
    make_pixels = sm.p_pixels

    def pixels(*args, **kwargs):
        codec = make_pixels(*args, **kwargs)
        push, rec = codec.push, stats["x_push"]

        def counted(stack: AnsStack, symbols: np.ndarray) -> float:
            before = stack.num_valid_bits()
            ideal = push(stack, symbols)
            rec["exact"] += stack.num_valid_bits() - before
            rec["ideal"] += ideal
            rec["count"] += symbols.size
            return ideal

        codec.push = counted
        return codec

    sm.p_pixels = pixels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    p.add_argument("image")
    p.add_argument("--box", type=int, nargs=4, metavar=("TOP", "LEFT", "H", "W"), default=(200, 300, 32, 64))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the random bits under the region")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    sm = StepModel(loaded.model, loaded.gamma_table)
    top, left, h, w = args.box
    pixels = load_image(args.image).planes
    if pixels is None:
        p.error("a palette or bilevel image has no planes for the model")
    x = np.ascontiguousarray(pixels[top : top + h, left : left + w].reshape(h, w, -1).transpose(2, 0, 1))
    stats = {k: {"exact": 0, "ideal": 0.0, "count": 0, "mass_outside_window_bits": 0.0,
                 "beyond_precision": 0, "beyond_precision_excess_bits": 0.0} for k in ("q_z0_pop", "x_push", "q_pop", "p_push")}
    instrument(sm, stats)
    stack = AnsStack(np.random.default_rng(args.seed).integers(0, 2**32, 1 << 18, dtype=np.uint32))
    before = stack.num_valid_bits()
    region = chain.encode_region(stack, sm, x)
    region.exact_bits = stack.num_valid_bits() - before
    out = {
        "image": args.image, "box": list(args.box), "model_id": loaded.model_id, "dims": int(x.size),
        "region_overhead_bits": region.exact_bits - region.implied_bits,
        "calls": {k: {**v, "overhead_bits": v["exact"] - v["ideal"],
                      "overhead_bits_per_symbol": (v["exact"] - v["ideal"]) / max(v["count"], 1)}
                  for k, v in stats.items()},
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
