"""What 8-bit integer arithmetic in the big network would cost (issue 18, the exact path).

Simulates post-training quantisation of the eps network the way an exact integer decoder
would run it (docs/DESIGN.md, "The exact path"): every convolution's weights as int8 with a
power-of-two scale per output channel, its input activations as int8 (the stem's as int16:
z needs more than 256 levels) with a power-of-two scale per layer, calibrated on other
images, either one scale for all steps or one per step (a table in the checkpoint).  The
γ embedding, FiLM and rounding gate stay float: they are per-step tables in an exact
decoder.  Prints the NELBO of centre crops under the float network and each variant.

    python -m benchmarks.experiments.int8_ptq --images ../shared/data/train/lossless-misc/waterloo_*.png \\
        --calibrate ../shared/data/train/photos/lomiri-wallpapers-16.04-Bridge.png

With --sensitivity, each layer's input alone at --act-bits[0] bits (the others at 16, weights
float) on the same crops: which layers need wide activations.

A diagnostic (one latent draw per step), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.evaluate import image_nelbo
from vdmcodec.train import load_rgb

EXCLUDED = ("emb.", "film", "round_gate")  # per-step tables in an exact decoder


def pow2_scale(max_abs: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest power of two s with max_abs / s <= 2^(bits-1) - 1."""
    q = 2 ** (bits - 1) - 1
    return torch.exp2(torch.ceil(torch.log2(torch.clamp(max_abs, min=1e-12) / q)))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    q = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), -q, q) * scale


class Quantiser:
    """Hooks on the network's convolutions: calibrate input ranges, then fake-quantise."""

    def __init__(self, net: nn.Module, weight_bits: int = 8, act_bits: int = 8, stem_bits: int = 16,
                 per_step: bool = False, wide: tuple[str, ...] = (), pow2_weights: bool = True):
        self.layers = {name: m for name, m in net.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(e in name + "." for e in EXCLUDED)}
        self.weight_bits, self.act_bits, self.stem_bits, self.per_step = weight_bits, act_bits, stem_bits, per_step
        self.wide, self.pow2_weights = wide, pow2_weights
        self.max_abs: dict = defaultdict(float)
        self.mode = "off"
        self.step_key = None
        self.float_weights = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        for name, m in self.layers.items():
            m.register_forward_pre_hook(self._hook(name))

    def _key(self, name):
        return (name, self.step_key) if self.per_step else (name, None)

    def _hook(self, name):
        def hook(module, args):
            (x,) = args
            if self.mode == "calibrate":
                k = self._key(name)
                self.max_abs[k] = max(self.max_abs[k], float(x.abs().max()))
                return None
            if self.mode == "quant":
                bits = self.stem_bits if name == "stem" or name in self.wide else self.act_bits
                s = pow2_scale(torch.tensor(self.max_abs.get(self._key(name), float(x.abs().max()))), bits)
                return (fake_quant(x, s, bits),)
            return None
        return hook

    def quantise_weights(self, on: bool) -> None:
        for name, m in self.layers.items():
            w = self.float_weights[name]
            if on:
                dims = tuple(range(1, w.dim()))
                m_abs = w.abs().amax(dim=dims, keepdim=True)
                # a non-power-of-two scale folds into the layer's fixed-point output multiplier
                s = pow2_scale(m_abs, self.weight_bits) if self.pow2_weights else m_abs / (2 ** (self.weight_bits - 1) - 1)
                w = fake_quant(w, s, self.weight_bits)
            m.weight.data.copy_(w)


def quantised(sm, original, qz: Quantiser, calib: list[np.ndarray], weights: bool = True) -> None:
    """Calibrate qz's activation ranges per step on calib, then route sm's network through it."""
    def net_with_step(k, i, context, calls=1):
        qz.step_key = i
        return original(k, i, context, calls)

    sm._net = net_with_step
    qz.mode = "calibrate"
    for planes in calib:
        image_nelbo(sm, planes, seed=99)
    qz.quantise_weights(weights)
    qz.mode = "quant"


def unquantised(sm, original, qz: Quantiser) -> None:
    qz.quantise_weights(False)
    qz.mode = "off"
    for m in qz.layers.values():
        m._forward_pre_hooks.clear()
    sm._net = original


def mean_nelbo(sm, images) -> float:
    results = [image_nelbo(sm, planes, seed=0) for _, planes in images]
    return sum(r["nelbo_bits"] for r in results) / sum(r["dims"] for r in results)


def sensitivity(sm, original, images, calib, bits: int) -> int:
    base = mean_nelbo(sm, images)
    print(json.dumps({"variant": "float", "mean_nelbo_bpd": round(base, 4)}), flush=True)
    for name in list(Quantiser(sm.model.net).layers):
        for m in sm.model.net.modules():  # the listing instance's hooks
            m._forward_pre_hooks.clear()
        qz = Quantiser(sm.model.net, act_bits=bits, stem_bits=16, per_step=True, pow2_weights=False)
        quantised(sm, original, qz, calib, weights=False)
        qz.wide = tuple(n for n in qz.layers if n != name)  # every other layer's input at 16 bits
        if name == "stem":
            qz.stem_bits = bits
        print(json.dumps({"layer": name, "bits": bits, "delta_bpd": round(mean_nelbo(sm, images) - base, 4)}),
              flush=True)
        unquantised(sm, original, qz)
    return 0


def crop(path: str, side: int) -> np.ndarray:
    im = load_rgb(path)
    h, w = (min(s, side) for s in im.shape[:2])
    y, x = (im.shape[0] - h) // 2 // 2 * 2, (im.shape[1] - w) // 2 // 2 * 2
    return np.ascontiguousarray(im[y : y + h, x : x + w])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--calibrate", nargs="+", required=True, help="other images that set the activation ranges")
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--act-bits", type=int, nargs="+", default=[8])
    p.add_argument("--weight-bits", type=int, default=8)
    p.add_argument("--exact-weight-scales", action="store_true", help="per-channel weight scales not powers of two")
    p.add_argument("--wide", nargs="*", default=[], help="layers whose inputs keep 16 bits (e.g. out head)")
    p.add_argument("--wide-bits", type=int, default=16, help="activation bits of the stem and the --wide layers")
    p.add_argument("--per-step-only", action="store_true")
    p.add_argument("--sensitivity", action="store_true", help="one layer at a time at --act-bits[0] bits")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    coder = Coder.for_effort(load_checkpoint(None), "default", adapt_context=False)
    sm = coder.step_model
    images = [(path.split("/")[-1], crop(path, args.side)) for path in args.images]
    calib = [crop(path, args.side) for path in args.calibrate]
    original = sm._net
    if args.sensitivity:
        return sensitivity(sm, original, images, calib, args.act_bits[0])
    steps = (True,) if args.per_step_only else (False, True)
    variants = [("float", None)] + [(f"w{args.weight_bits}a{a} {'per-step' if ps else 'global'}", (a, ps))
                                    for a in args.act_bits for ps in steps]
    totals = defaultdict(float)
    for label, spec in variants:
        qz = None
        if spec is not None:
            qz = Quantiser(sm.model.net, weight_bits=args.weight_bits, act_bits=spec[0], per_step=spec[1],
                           wide=tuple(args.wide), pow2_weights=not args.exact_weight_scales,
                           stem_bits=args.wide_bits)
            quantised(sm, original, qz, calib)
        for name, planes in images:
            r = image_nelbo(sm, planes, seed=0)
            totals[label] += r["nelbo_bits"]
            totals[label + " dims"] += r["dims"]
            print(json.dumps({"variant": label, "image": name, "nelbo_bpd": round(r["nelbo_bpd"], 4),
                              "terms": {k: round(v, 4) for k, v in r["terms"].items()}}), flush=True)
        if qz is not None:
            unquantised(sm, original, qz)
    for label, _ in variants:
        print(json.dumps({"variant": label, "mean_nelbo_bpd": round(totals[label] / totals[label + " dims"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
