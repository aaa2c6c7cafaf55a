"""How much the pixel context would gain if its weights were fitted to each image (and sent
in the header) instead of shared: an estimate on held-out training crops, network frozen.

    python -m benchmarks.experiments.per_image_context runs/s6/model.pt --crops 5 --size 192

For each crop: one z_0 draw, the network's outputs at it, then the reconstruction term
(bits per dim) with the model's context weights and after 120 Adam steps on that crop's
own weights and log-scales (237 numbers for RGB with four passes, ~0.5 kB as float16).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch
from torch.nn import functional as F

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.vdm import (CONTEXT_KERNEL, CONTEXT_RESIDUAL_CLIP, DECODER_LOG_SCALE_RANGE, alpha2,
                                channel_coefficients, discretized_logistic_logp, pass_map, pixels_to_unit, sigma2)
from vdmcodec.train import list_images, load_rgb, split_data


def context(xt, loc, scale, coef, weight, log_scale):
    """VDM.context_params with the weights given (RGB)."""
    b, c, h, w = xt.shape
    weight = weight.reshape(-1, c, c, CONTEXT_KERNEL, CONTEXT_KERNEL)
    passes = weight.shape[0] + 1
    pm = pass_map(h, w, passes)
    u = torch.clamp((xt - loc) / scale, -CONTEXT_RESIDUAL_CLIP, CONTEXT_RESIDUAL_CLIP)
    shift = torch.zeros_like(u)
    for p in range(1, passes):
        shift = torch.where(pm == p, F.conv2d(u * (pm < p), weight[p - 1], padding=CONTEXT_KERNEL // 2), shift)
    loc = loc + scale * shift
    scale = scale * torch.exp(log_scale[pm].permute(2, 0, 1))
    a = channel_coefficients(coef)
    e = xt - loc
    loc = torch.stack([loc[:, 0], loc[:, 1] + a[:, 0] * e[:, 0], loc[:, 2] + a[:, 1] * e[:, 0] + a[:, 2] * e[:, 1]], 1)
    return loc, scale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--crops", type=int, default=5)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    s = args.size
    crops = []
    for f in hold:
        im = load_rgb(f)
        if min(im.shape[:2]) >= 256 and len(crops) < args.crops:
            y, x0 = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
            crops.append(im[y : y + s, x0 : x0 + s])
    x = torch.from_numpy(np.stack(crops).astype(np.int64)).permute(0, 3, 1, 2).contiguous()
    g0 = model.schedule(torch.tensor([0.0], dtype=torch.float64))[0].detach()
    a0, s0 = torch.sqrt(alpha2(g0)), torch.sqrt(sigma2(g0))
    xt = pixels_to_unit(x).double()
    with torch.no_grad():
        z0 = a0.float() * xt.float() + s0.float() * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        eps, aux = model.net(z0, g0.float().reshape(1).expand(x.shape[0]), with_aux=True)
    loc0 = (z0.double() - s0 * eps.double()) / a0
    scale0 = model.decoder_scale(g0).detach() * torch.exp(torch.clamp(aux["decoder_log_scale"].double(), *DECODER_LOG_SCALE_RANGE))
    coef = aux["channel_coef"].double()
    w0, l0 = model.context_weight.detach().double(), model.context_log_scale.detach().double()

    def bits(i, w, l):
        loc, sc = context(xt[[i]], loc0[[i]], scale0[[i]], coef[[i]], w, l)
        return -discretized_logistic_logp(x[[i]], loc, sc).mean() / math.log(2.0)

    rows = []
    for i in range(x.shape[0]):
        with torch.no_grad():
            shared = float(bits(i, w0, l0))
        w, l = w0.clone().requires_grad_(True), l0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w, l], lr=0.005)
        for _ in range(args.steps):
            opt.zero_grad()
            bits(i, w, l).backward()
            opt.step()
        with torch.no_grad():
            own = float(bits(i, w, l))
        rows.append({"crop": i, "shared_bpd": shared, "own_bpd": own, "gain_bpd": shared - own})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"mean_gain_bpd": float(np.mean([r["gain_bpd"] for r in rows])), "crops": len(rows),
                      "size": s, "checkpoint": args.checkpoint}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
