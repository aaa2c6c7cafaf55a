"""How well a few whole-image steps give each band of rows its share of the diffusion term.

    python -m benchmarks.experiments.diffusion_rows IMAGES... --crop 768x512 \\
        --subsets 1,2 1,2,4,8,16 1,2,3,5,8,12,16 --json results/diffusion_rows.json

For each image (a centre crop): every step of the default plan on the whole image (float
network, one noise draw per step), each row's KL at each step.  Then for each subset of
steps (indices into the plan, 1..T): each row's bits at the other steps interpolated
linearly between the subset's, the rows rescaled to the true total (compress takes the
total from coding.estimate's ratio estimator), and the largest relative error of a band of
--band rows, with the interpolated total's own ratio to the truth.  coding.estimate takes
steps 1, 2, 4, 8 and 16 from this (session 17).  Training images only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.experiments.effort_ablation import centre_crop, write_rows
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding.estimate import diffusion_by_row, float_step_model


def band_errors(by_step: np.ndarray, subset: list[int], band: int) -> tuple[float, float]:
    """(largest |band estimate / truth - 1|, interpolated total / truth) for by_step (T, H)."""
    T, h = by_step.shape
    every = np.arange(1, T + 1)
    rows = np.array([np.interp(every, subset, by_step[np.array(subset) - 1, r]).sum() for r in range(h)])
    truth = by_step.sum(axis=0)
    starts = np.arange(0, h, band)
    scaled = rows * truth.sum() / rows.sum()
    err = np.add.reduceat(scaled, starts) / np.add.reduceat(truth, starts) - 1.0
    return float(np.abs(err).max()), float(rows.sum() / truth.sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    p.add_argument("--subsets", nargs="+", default=["1,2", "1,2,4,8,16", "1,2,3,5,8,12,16"])
    p.add_argument("--band", type=int, default=64)
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = map(int, args.crop.split("x"))
    fsm = float_step_model(Coder.for_effort(load_checkpoint(args.checkpoint), "default", threads=args.threads).step_model)
    subsets = [[int(s) for s in text.split(",")] for text in args.subsets]
    rows = []
    for path in args.images:
        x = np.ascontiguousarray(centre_crop(path, width, height).planes.transpose(2, 0, 1))
        by_step = diffusion_by_row(fsm, x, range(1, fsm.grids.T + 1), np.random.default_rng(0))
        row = {"image": path.name, "share_of_steps_1_2": float(by_step[:2].sum() / by_step.sum())}
        for subset, text in zip(subsets, args.subsets):
            worst, total = band_errors(by_step, subset, args.band)
            row[text] = {"worst_band_error": worst, "interpolated_total_ratio": total}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_rows(args.json_out, {"images": [str(q) for q in args.images], "crop": args.crop, "band": args.band,
                                   "subsets": args.subsets, "checkpoint": args.checkpoint}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
