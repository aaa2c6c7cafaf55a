"""Per-image adaptation deeper than the output layer: constant per-channel deltas added to
the residual blocks' FiLM (scale, shift), or a scale and shift on every convolution's output,
fitted by backward passes through the whole network on an image's own random patches at the
diffusion steps that carry the bits (1..16), and measured on a fixed grid of the image's
patches with another noise draw.  Session 7 found the output layer alone does not pay
(benchmarks/experiments/output_layer_adaptation); this asks whether adapters inside it do:

    python -m benchmarks.experiments.film_adaptation IMAGES... [--iters 100] [--lr 3e-3]

prints, per image and group, the bits per dim of steps 1..16 before and after the fit, the
numbers the group would send and the fitting seconds.  A diagnostic, not a benchmark.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.rice import pack_parts
from vdmcodec.coding import film
from vdmcodec.train import load_rgb


def random_patches(im: np.ndarray, gen: np.random.Generator, n: int, size: int) -> torch.Tensor:
    h, w = im.shape[:2]
    ys, xs = gen.integers(0, h - size + 1, n), gen.integers(0, w - size + 1, n)
    return torch.from_numpy(np.stack([im[y:y + size, x:x + size] for y, x in zip(ys, xs)]).astype(np.int64)).permute(0, 3, 1, 2)


def step_bits(net, table, x: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
    """The coder's fit loss (coding.film.step_bits), noting the step for film2's hooks."""
    CURRENT_STEP[0] = i
    return film.step_bits(net, table, x, i, eps)


CURRENT_STEP = [0]  # the step of the network call under way (film2's deltas depend on it)
SPLIT_STEP = 8  # film2: one set of deltas for steps 1..8, another for the later ones


class Adapters:
    """Zero-initialised deltas attached to a network by forward hooks."""

    def __init__(self, net, group: str):
        self.params, self.handles = [], []
        if group == "film2":
            for _, blk in film.film_blocks(net):
                lo = torch.zeros(blk.film.out_features, requires_grad=True)
                hi = torch.zeros(blk.film.out_features, requires_grad=True)
                self.params += [lo, hi]
                self.handles.append(blk.film.register_forward_hook(
                    lambda m, i, o, lo=lo, hi=hi: o + (lo if CURRENT_STEP[0] <= SPLIT_STEP else hi)))
        elif group.startswith("film"):
            blocks = {"film": [b for _, b in film.film_blocks(net)], "film_b2": [*net.blocks2],
                      "film_b1u": [*net.blocks1, *net.ublocks1]}[group]
            for blk in blocks:
                d = torch.zeros(blk.film.out_features, requires_grad=True)
                self.params.append(d)
                self.handles.append(blk.film.register_forward_hook(lambda m, i, o, d=d: o + d))
        elif group in ("convs", "convs_late"):
            mods = [m for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and name != "out"]
            if group == "convs_late":  # the full-resolution path after the U-Net's bottom
                mods = [net.up1, net.head]
            for m in mods:
                sc = torch.zeros(m.out_channels, requires_grad=True)
                sh = torch.zeros(m.out_channels, requires_grad=True)
                self.params += [sc, sh]
                self.handles.append(m.register_forward_hook(
                    lambda m, i, o, sc=sc, sh=sh: o * (1 + sc[:, None, None]) + sh[:, None, None]))
        else:
            raise ValueError(group)

    def count(self) -> int:
        return sum(p.numel() for p in self.params)

    def remove(self):
        for h in self.handles:
            h.remove()


def evaluate(net, table, x, steps, seed) -> float:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(float(step_bits(net, table, x, i, torch.randn(x.shape, generator=gen))) for i in steps) / x.numel()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--groups", default="film,convs_late,convs")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--quant", default="0.0625,0.03125,0.015625", help="quantisation steps of the deltas")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    net, table = lm.model.net, lm.gamma_table
    for p in net.parameters():
        p.requires_grad_(False)
    steps = list(range(1, 17))
    for path in args.images:
        im = load_rgb(path)
        x_eval = film.grid_patches(torch.from_numpy(im.transpose(2, 0, 1).astype(np.int64)))
        base = evaluate(net, table, x_eval, steps, seed=2)
        res = {"image": path.split("/")[-1], "steps1_16_bpd": round(base, 4)}
        for group in args.groups.split(","):
            ad = Adapters(net, group)
            opt = torch.optim.Adam(ad.params, lr=args.lr)
            gen = np.random.default_rng(1)
            tgen = torch.Generator().manual_seed(1)
            t0 = time.time()
            for _ in range(args.iters):
                x = random_patches(im, gen, args.batch, args.size)
                i = int(gen.integers(1, 17))
                loss = step_bits(net, table, x, i, torch.randn(x.shape, generator=tgen)) / x.numel()
                opt.zero_grad()
                loss.backward()
                opt.step()
            fit_s = time.time() - t0
            after = evaluate(net, table, x_eval, steps, seed=2)
            res[group] = {"numbers": ad.count(), "eval_bpd": round(after, 4), "gain": round(base - after, 4),
                          "fit_s": round(fit_s, 1)}
            fitted = [p.detach().clone() for p in ad.params]
            for q in [float(v) for v in args.quant.split(",") if v]:
                ints = [torch.clamp(torch.round(f / q), -127, 127) for f in fitted]
                with torch.no_grad():
                    for p, k in zip(ad.params, ints):
                        p.copy_(k * q)
                qa = evaluate(net, table, x_eval, steps, seed=2)
                side = len(pack_parts([k.numpy().astype(np.int64) for k in ints]))
                # side bits per dim of a 768x512 RGB image
                res[group][f"q{q:g}"] = {"gain": round(base - qa, 4), "bytes": side,
                                         "net_kodak": round(base - qa - side * 8 / (768 * 512 * 3), 4)}
            ad.remove()
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
