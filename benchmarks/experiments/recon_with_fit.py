"""Reconstruction term of whole images as the coder codes them: with the model's pixel
context, and with each image's own fitted context (coding.adapt) and what sending it costs.
For choosing a pixel decoder on photographs the models were not trained on.

    python -m benchmarks.experiments.recon_with_fit checkpoints/default.pt runs/ctx/state.pt \\
        --images ../shared/data/train/lossless-misc/waterloo_*.png --max-side 768

A diagnostic (one z_0 draw per image at the coding grid), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from benchmarks.experiments.recon_by_pass import load_any
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding import adapt
from vdmcodec.coding.steps import StepModel
from vdmcodec.train import load_rgb


def recon_bits(sm: StepModel, planes: np.ndarray, weights=None, seed: int = 0) -> float:
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    g = sm.grids
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * np.random.default_rng(seed).standard_normal(xt.shape)) / g.delta[0])
    return sm.p_pixels(k0.astype(np.int32), weights=weights).bits(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--max-side", type=int, default=768, help="centre crop to at most this per side")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--fit-steps", type=int, default=adapt.FitBudget().steps)
    p.add_argument("--fit-patches", type=int, nargs=2, default=adapt.FitBudget().patches)
    p.add_argument("--fit-seed", type=int, default=0, help="the z_0 draw the fit sees")
    p.add_argument("--fit-patch", type=int, nargs=2, default=adapt.FIT_PATCH, help="patch height, width")
    p.add_argument("--z0-ensemble", type=int, default=1, choices=(1, 2, 4),
                   help="network calls at z_0 for an image with its own context (StepModel.z0_ensemble)")
    p.add_argument("--feature-lr", type=float, default=None,
                   help="the fit's learning rate for the feature read-out (default: adapt.FEATURE_LR)")
    args = p.parse_args(argv)
    if args.feature_lr is not None:
        adapt.FEATURE_LR = args.feature_lr
    if args.threads:
        torch.set_num_threads(args.threads)
    table = load_checkpoint(None).gamma_table.numpy()
    for spec in args.models:
        sm = StepModel(load_any(spec), table, z0_ensemble=args.z0_ensemble)
        totals = np.zeros(4)
        for path in args.images:
            im = load_rgb(path)
            h, w = (min(s, args.max_side) for s in im.shape[:2])
            y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
            im = np.ascontiguousarray(im[y : y + h, x : x + w])
            t = time.time()
            plain = recon_bits(sm, im)
            t_plain = time.time() - t
            t = time.time()
            weights, info = adapt.fit_image_context(
                sm, im, seed=args.fit_seed, budget=adapt.FitBudget(steps=args.fit_steps, patches=tuple(args.fit_patches),
                                             patch=tuple(args.fit_patch)))
            t_fit = time.time() - t
            fitted = recon_bits(sm, im, weights) + (info["cost_bits"] if weights is not None else 0.0)
            dims = im.size
            totals += [plain, fitted, dims, 0]
            print(json.dumps({"model": spec, "image": path.split("/")[-1], "dims": dims,
                              "recon_bpd": round(plain / dims, 4), "recon_fitted_bpd": round(fitted / dims, 4),
                              "fit": info.get("choice"),
                              "candidates": {k: round(v["net_bits"] / dims, 4) for k, v in info.get("candidates", {}).items()},
                              "decoder_s": round(t_plain, 2), "fit_s": round(t_fit, 2)}), flush=True)
        print(json.dumps({"model": spec, "z0_ensemble": args.z0_ensemble, "feature_lr": adapt.FEATURE_LR,
                          "mean_recon_bpd": round(totals[0] / totals[2], 4),
                          "mean_recon_fitted_bpd": round(totals[1] / totals[2], 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
