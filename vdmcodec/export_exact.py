"""Add exact-arithmetic tables to a checkpoint: its eps network and context network as integer
convolutions with per-step tables (model.exact_net, model.exact_context), calibrated on
training photos, so that files coded with them open on any machine.

    python -m vdmcodec.export_exact checkpoints/default.pt checkpoints/default.pt \\
        --model-id vdmc-rgb-t64-s11 --calibrate ../shared/data/train/photos/*.png

The new checkpoint has the same float weights, carries the source model (and what it
carried) as earlier models, so every file written before still decodes, and is a new model
(its hash covers the tables).  Never calibrate on a benchmark set.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from .checkpoints import earlier_models, half_state_dict, load_checkpoint, save_checkpoint
from .model.exact_context import ExactModel, calibrate_context, export_context
from .model.exact_net import export_exact


def centre_crop(im: np.ndarray, side: int) -> np.ndarray:
    h, w = (min(s, side) for s in im.shape[:2])
    y, x = (im.shape[0] - h) // 2 // 2 * 2, (im.shape[1] - w) // 2 // 2 * 2
    return np.ascontiguousarray(im[y : y + h, x : x + w])


def build_exact_model(loaded, calibration: list[np.ndarray], seed: int = 0) -> ExactModel:
    """Export both networks of a loaded checkpoint; calibration: uint8 (H, W, 3) crops."""
    from .coding.steps import StepModel

    net = export_exact(loaded.model.net, loaded.gamma_table.numpy(), calibration, seed=seed)
    ctx_net = loaded.model.context_net
    if ctx_net is None:
        return ExactModel(net, None)
    sm = StepModel(loaded.model, loaded.gamma_table.numpy())
    g = sm.grids
    rng = np.random.default_rng(seed)

    def code_calibration():
        for im in calibration:
            x = np.ascontiguousarray(im.transpose(2, 0, 1))
            xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
            k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
            sm.p_pixels(k0).bits(x)

    return ExactModel(net, export_context(ctx_net, calibrate_context(ctx_net, code_calibration)))


def main(argv=None) -> int:
    from .train import load_rgb

    p = argparse.ArgumentParser(prog="python -m vdmcodec.export_exact", description=__doc__.split("\n")[0])
    p.add_argument("source", help="a vdmcodec checkpoint")
    p.add_argument("out")
    p.add_argument("--model-id", required=True)
    p.add_argument("--calibrate", nargs="+", required=True, help="training photos (never a benchmark set)")
    p.add_argument("--side", type=int, default=256, help="centre crops of at most this side")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    loaded = load_checkpoint(args.source)
    # the tables must fit the weights as this checkpoint will store them (save_checkpoint
    # rounds the networks to float16; a source written before may hold float32 ones)
    loaded.model.load_state_dict({k: v.float() for k, v in half_state_dict(loaded.model).items()})
    crops = [centre_crop(load_rgb(f), args.side) for f in args.calibrate]
    exact = build_exact_model(loaded, crops)
    meta = dict(loaded.meta, exact={"calibration": [os.path.basename(f) for f in args.calibrate], "side": args.side})
    earlier = earlier_models(args.source)
    sha = save_checkpoint(args.out, loaded.model, args.model_id, meta, earlier=earlier, exact=exact.state())
    print(f"{args.out}: sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
