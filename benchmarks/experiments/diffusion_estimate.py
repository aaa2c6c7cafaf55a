"""How well a patch estimate of the diffusion term matches the whole image's.

    python -m benchmarks.experiments.diffusion_estimate IMAGES... --crop 768x512 \\
        --variants 3x4:64:16:0 3x4:64:16:2 3x4:64:16:4

For each image (a centre crop) the diffusion term of the default effort's plan and
ensembles on the whole image (float network, one noise draw per step: the truth), then
coding.estimate.estimate_diffusion with each variant (grid rows x columns : patch side :
margin : how many of the steps 1, 2, 4, 8, ... on the whole image), as relative error and
seconds.  Session 16 chose 3x4:64:16:2 from six training crops (then the first N steps: 1
and 2); session 17 takes 5 (steps 1, 2, 4, 8 and 16), for the rows' sake (coding.bands).
Training images only, never the benchmark sets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.experiments.effort_ablation import centre_crop
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding.estimate import diffusion_by_step, estimate_diffusion, float_step_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    p.add_argument("--variants", nargs="+", default=["3x4:64:16:0", "3x4:64:16:1", "3x4:64:16:2", "3x4:64:16:4"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = map(int, args.crop.split("x"))
    sm = Coder.for_effort(load_checkpoint(None), "default", threads=args.threads).step_model
    fsm = float_step_model(sm)
    for path in args.images:
        planes = centre_crop(path, width, height).planes
        x = np.ascontiguousarray(planes.transpose(2, 0, 1))
        t0 = time.perf_counter()
        truth = float(diffusion_by_step(fsm, x, None, range(1, fsm.grids.T + 1), np.random.default_rng(5)).sum())
        row = {"image": path.name, "truth_bpd": truth / planes.size, "truth_s": time.perf_counter() - t0}
        for spec in args.variants:
            grid, patch, margin, whole = spec.split(":")
            ny, nx = map(int, grid.split("x"))
            est = estimate_diffusion(sm, planes, grid=(ny, nx), patch=int(patch), margin=int(margin),
                                     whole_steps=int(whole))
            row[spec] = {"error": est.bits / truth - 1.0, "seconds": est.seconds}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
