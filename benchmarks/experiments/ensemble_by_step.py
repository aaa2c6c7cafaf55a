"""Where does the flip ensemble gain? Diffusion bits of each step i with 1, 2, 4 (and 8: the
four flips of z and of its transpose) network calls, on held-out training images.

    python -m benchmarks.experiments.ensemble_by_step checkpoints/default.pt --size 256 --json out.json

Every call count sees the same z_i draw at each step, so the per-step differences are paired.
The coder's cost is the same at every step, so a step's gain is also its gain per unit of time:
the table says which steps an ensemble pays on.  Training data only: never Kodak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.steps import StepModel, reverse_log_var_np
from vdmcodec.train import list_images, load_rgb, split_data

CALLS = (1, 2, 4, 8)


def outputs(sm: StepModel, k: np.ndarray, i: int, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """eps_hat and lambda at z_i, averaged over `calls` flips (8: the transposed copy too)."""
    if calls < 8:
        eps, aux = sm._net(k, i, None, calls)
        return eps, reverse_log_var_np(aux["reverse_var"])
    e1, a1 = sm._net(k, i, None, 4)
    e2, a2 = sm._net(np.ascontiguousarray(k.transpose(0, 2, 1)), i, None, 4)
    eps = 0.5 * (e1 + e2.transpose(0, 2, 1))
    raw = 0.5 * (a1["reverse_var"] + a2["reverse_var"].transpose(0, 2, 1))
    return eps, reverse_log_var_np(raw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--size", type=int, default=256, help="centre crop side (0: whole images)")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--calls", type=int, nargs="+", default=list(CALLS), choices=CALLS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    sm = StepModel(lm.model, lm.gamma_table.numpy())
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    s = args.size
    crops, names = [], []
    for f in hold:
        im = load_rgb(f)
        if len(crops) < args.images and min(im.shape[:2]) >= max(s, 128):
            y, x = ((im.shape[0] - s) // 2, (im.shape[1] - s) // 2) if s else (0, 0)
            crops.append(im[y : y + s, x : x + s] if s else im)
            names.append(str(f))
    g = sm.grids
    bits = np.zeros((len(args.calls), g.T + 1))
    dims = 0
    for n, im in enumerate(crops):
        x = np.ascontiguousarray(im.transpose(2, 0, 1))
        xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
        dims += x.size
        rng = np.random.default_rng(n)
        for i in range(1, g.T + 1):
            k = np.rint((g.alpha[i] * xt + g.sigma[i] * rng.standard_normal(xt.shape)) / g.delta[i]).astype(np.int32)
            for j, calls in enumerate(args.calls):
                eps, lam = outputs(sm, k, i, calls)
                bits[j, i] += sm.step_kl_bits(xt, k, i, eps, lam)
        print(f"image {n + 1}/{len(crops)} done", file=sys.stderr, flush=True)
    bpd = bits / dims
    rows = [{"step": i, "gamma": float(g.gamma[i]), **{f"bpd_{c}": float(bpd[j, i]) for j, c in enumerate(args.calls)}}
            for i in range(1, g.T + 1)]
    summary = {f"diffusion_bpd_{c}": float(bpd[j].sum()) for j, c in enumerate(args.calls)}
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"checkpoint": lm.model_id, "sha256": lm.sha256, "images": names,
                                                   "size": s, "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
