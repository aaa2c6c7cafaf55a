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

import numpy as np

from benchmarks.experiments.effort_ablation import crop_coder, crop_parser, run_on_crops
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
    p = crop_parser(__doc__, effort=False)
    p.add_argument("--subsets", nargs="+", default=["1,2", "1,2,4,8,16", "1,2,3,5,8,12,16"])
    p.add_argument("--band", type=int, default=64)
    args = p.parse_args(argv)
    fsm = float_step_model(crop_coder(args).step_model)
    subsets = [[int(s) for s in text.split(",")] for text in args.subsets]

    def measure(path, img) -> dict:
        x = np.ascontiguousarray(img.planes.transpose(2, 0, 1))
        by_step = diffusion_by_row(fsm, x, range(1, fsm.grids.T + 1), np.random.default_rng(0))
        row = {"image": path.name, "share_of_steps_1_2": float(by_step[:2].sum() / by_step.sum())}
        for subset, text in zip(subsets, args.subsets):
            worst, total = band_errors(by_step, subset, args.band)
            row[text] = {"worst_band_error": worst, "interpolated_total_ratio": total}
        return row

    run_on_crops(args, measure, {"band": args.band, "subsets": args.subsets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
