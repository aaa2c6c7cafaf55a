"""What do fewer, larger diffusion steps cost? The diffusion term of step plans that keep the
model's first steps (where the bits are) and jump several grid steps at a time later on,
on held-out training crops.

    python -m benchmarks.experiments.step_plans checkpoints/default.pt --size 256 --images 3

A plan is a list of gamma-table indices 0 = j_0 < j_1 < ... < j_n = T; the network is only
ever called at the grid gammas it was trained on.  A jump from j_k to j_{k-1} is one step
of the discrete-time chain with its own posterior q(z_s | z_t, x); its reverse variance is
the network's one-step lambda rescaled to the jump: the network's lambda says the mean
squared eps error m through e^lambda = 1 + expm1(g_t - g_{t-1}) m, and the jump's
variance is 1 + expm1(g_t - g_s) m (the best variance for that error), as the coder does it.  Continuous latents
(no coding grid): an estimate for choosing a plan.  Training data only: never Kodak.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.steps import LOG2E, jump_log_var, jump_ratio, plan_from_strides, reverse_log_var_np
from vdmcodec.coding.grids import snap
from vdmcodec.train import list_images, load_rgb, split_data



def plan_from_spec(spec: str, T: int) -> tuple[int, ...]:
    """'16:1,32:2,64:4' -> indices 0..16 by 1, then to 32 by 2, then to 64 by 4."""
    strides = [(int(end) / T, int(stride)) for end, stride in (part.split(":") for part in spec.split(","))]
    return plan_from_strides(T, tuple(strides))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--plans", nargs="+", default=["64:1", "16:1,32:2,64:4", "12:1,64:4", "8:1,16:2,32:4,64:8"])
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    gam = snap(lm.gamma_table.numpy())
    T = len(gam) - 1
    plans = {spec: plan_from_spec(spec, T) for spec in args.plans}
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    s = args.size
    crops = [im[(im.shape[0] - s) // 2 : (im.shape[0] + s) // 2, (im.shape[1] - s) // 2 : (im.shape[1] + s) // 2]
             for im in (load_rgb(f) for f in hold) if min(im.shape[:2]) >= s][: args.images]
    bits = {spec: 0.0 for spec in plans}
    dims = 0
    calls_needed = sorted({j for plan in plans.values() for j in plan[1:]})
    for n, im in enumerate(crops):
        x = np.ascontiguousarray(im.transpose(2, 0, 1))
        xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
        dims += x.size
        rng = np.random.default_rng(n)
        for t in calls_needed:
            a, sg = math.sqrt(1.0 / (1.0 + math.exp(gam[t]))), math.sqrt(1.0 / (1.0 + math.exp(-gam[t])))
            eps = rng.standard_normal(xt.shape)
            z = a * xt + sg * eps
            zt = torch.from_numpy(z.astype(np.float32))[None]
            with torch.no_grad():
                eps_hat, aux = lm.model.net(zt, torch.tensor([gam[t]], dtype=torch.float32), with_aux=True)
            err2 = (eps - eps_hat[0].double().numpy()) ** 2
            lam1 = reverse_log_var_np(aux["reverse_var"][0].double().numpy())
            for spec, plan in plans.items():
                if t not in plan[1:]:
                    continue
                s_idx = plan[plan.index(t) - 1]
                lam = lam1 if s_idx == t - 1 else jump_log_var(lam1, jump_ratio(gam, t, s_idx))  # the coder's rule
                r = math.expm1(gam[t] - gam[s_idx]) * err2
                bits[spec] += float((0.5 * (lam + np.exp(-lam) * (1.0 + r) - 1.0)).sum()) * LOG2E
        print(f"image {n + 1}/{len(crops)} done", file=sys.stderr, flush=True)
    for spec, plan in plans.items():
        print(json.dumps({"plan": spec, "calls": len(plan) - 1, "diffusion_bpd": bits[spec] / dims,
                          "checkpoint": lm.model_id, "size": s, "images": len(crops)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
