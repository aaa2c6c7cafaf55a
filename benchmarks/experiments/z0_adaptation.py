"""Which per-image adaptations of p(x | z_0) pay, judged on rows the fit did not see.

Centre crop of each image (at most --side square, even offsets), one z_0 draw; the fit sees
the top half and is judged on the bottom half.  What is fitted (Adam, --steps):
  --fit ctx       the pixel context as the coder fits it (linear weights, log-scales, the
                  context network's last layers, gains, colour shifts per pass);
  --readout 1x1   a linear read-out of the network's last features at z_0 added to its
                  eps, decoder log-scale and colour outputs (3x3: a 3x3 convolution);
  --hidden-biases the context network's hidden biases;
and --ensemble N averages N flipped network calls at z_0 (network.flip_ensemble).

    python -m benchmarks.experiments.z0_adaptation --fit ctx --readout 1x1 \\
        ../shared/data/train/lossless-misc/waterloo_sail.png

A throwaway-sized diagnostic of session 10 (the read-out here acts on the network's eps,
before the context network; the coder's, coding.pixels.feature_outputs, acts after it, in
scales), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.network import flip_ensemble
from vdmcodec.model.vdm import DECODER_LOG_SCALE_RANGE, alpha2, discretized_logistic_logp, pixels_to_unit, sigma2
from vdmcodec.train import load_rgb


def centre_crop(path: str, side: int) -> torch.Tensor:
    im = load_rgb(path)
    h, w = min(side, im.shape[0]) // 4 * 4, min(side, im.shape[1]) // 4 * 4
    y, x = (im.shape[0] - h) // 4 * 2, (im.shape[1] - w) // 4 * 2
    return torch.from_numpy(np.ascontiguousarray(im[y : y + h, x : x + w])).permute(2, 0, 1)[None].long()


def run(model, path: str, args) -> dict:
    net = model.net
    g0 = model.schedule(torch.tensor([0.0], dtype=torch.float64))[0]
    a0, s0 = torch.sqrt(alpha2(g0)), torch.sqrt(sigma2(g0))
    x = centre_crop(path, args.side)
    h = x.shape[2]
    xt = pixels_to_unit(x)
    z0 = a0.float() * xt + s0.float() * torch.randn(xt.shape, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        eps, aux = flip_ensemble(net, z0, g0.float().reshape(1), args.ensemble, with_features=True)
    feats = aux["features"]
    k = 3 if args.readout == "3x3" else 1
    read_w = torch.zeros(9, feats.shape[1], k, k, requires_grad=True)
    read_b = torch.zeros(9, requires_grad=True)
    w0, l0 = (t.float().clone().requires_grad_(True) for t in model.context_weights(3))
    head = [tuple(t.detach().clone().float().requires_grad_(True) for t in wb) for wb in model.context_net.heads()]
    gains = torch.ones(len(head), 2, requires_grad=True)
    coef_shift = torch.zeros(model.cfg.context_passes, 3, requires_grad=True)
    biases = [m.bias for n in model.context_net.nets for m in (n[0], n[2])]
    saved = [b.detach().clone() for b in biases]

    def bits(rows: slice) -> torch.Tensor:
        d = F.conv2d(feats, read_w, read_b, padding=k // 2)
        e = eps + d[:, 0:3]
        log_scale = aux["decoder_log_scale"] + d[:, 3:6]
        coef = aux["channel_coef"] + d[:, 6:9]
        loc = (z0.double() - s0 * e.double()) / a0
        scale = model.decoder_scale(g0) * torch.exp(torch.clamp(log_scale.double(), *DECODER_LOG_SCALE_RANGE))
        lo, sc = model.context_params(xt.double(), loc, scale, coef, weights=(w0.double(), l0.double()), head=head,
                                      gains=gains, coef_shift=coef_shift)
        return -discretized_logistic_logp(x, lo, sc)[..., rows, :].mean() / math.log(2.0)

    groups = []
    if args.readout != "none":
        groups.append({"params": [read_w, read_b], "lr": args.readout_lr})
    if args.fit == "ctx":
        groups += [{"params": [w0, l0] + [t for wb in head for t in wb], "lr": 0.005},
                   {"params": [gains], "lr": 0.05}, {"params": [coef_shift], "lr": 0.02}]
    if args.hidden_biases:
        for b in biases:
            b.requires_grad_(True)
        groups.append({"params": biases, "lr": 0.005})
    fit_rows, held_rows = slice(0, h // 2), slice(h // 2, h)
    with torch.no_grad():
        before = float(bits(held_rows))
    t0 = time.time()
    if groups:
        opt = torch.optim.Adam(groups)
        for _ in range(args.steps):
            opt.zero_grad()
            bits(fit_rows).backward()
            opt.step()
    with torch.no_grad():
        after = float(bits(held_rows))
        for b, b0 in zip(biases, saved):
            b.requires_grad_(False)
            b.copy_(b0)
    return {"image": path.split("/")[-1], "size": list(x.shape[2:]), "held_out_bpd_model": round(before, 4),
            "held_out_bpd_fitted": round(after, 4), "fit_s": round(time.time() - t0, 1),
            "readout_max": round(float(read_w.detach().abs().max()), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--fit", choices=("none", "ctx"), default="ctx")
    p.add_argument("--readout", choices=("none", "1x1", "3x3"), default="none")
    p.add_argument("--readout-lr", type=float, default=0.003)
    p.add_argument("--hidden-biases", action="store_true")
    p.add_argument("--ensemble", type=int, choices=(1, 2, 4), default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--side", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    rows = [run(model, path, args) for path in args.images]
    for r in rows:
        print(json.dumps(r), flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "images"}
    print(json.dumps({**settings, "mean_held_out_bpd_model": round(float(np.mean([r["held_out_bpd_model"] for r in rows])), 4),
                      "mean_held_out_bpd_fitted": round(float(np.mean([r["held_out_bpd_fitted"] for r in rows])), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
