"""The per-image context fit's budget: patches and Adam steps against the bits they save.

    python -m benchmarks.experiments.fit_budget IMAGES... --crop 768x512 --budgets 4x4:60 8x8:60 8x8:60:16

For each image (a centre crop) and budget (patch grid rows x columns : Adam steps [: patches per step,
drawn afresh each step]), runs the
encoder's context fit (`coding.adapt.fit_image_context`, the shipped model, the image's own
FiLM deltas not applied) and reports the whole image's reconstruction bpd with the model's
context and with the fitted one, the net saving after the side data, the candidate chosen
and the seconds.  Choose on training images, never on the benchmark sets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.experiments.effort_ablation import centre_crop, write_rows
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding.adapt import FitBudget, fit_image_context


def parse_budget(text: str) -> FitBudget:
    """rows x columns : Adam steps [: patches per step]"""
    grid, steps, *batch = text.split(":")
    ny, nx = map(int, grid.split("x"))
    return FitBudget(steps=int(steps), patches=(ny, nx), batch=int(batch[0]) if batch else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    p.add_argument("--budgets", nargs="+", default=["4x4:60", "4x4:150", "8x8:60", "16x16:150"])
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--z0-ensemble", type=int, default=None, help="network calls at z_0 (default: the preset's)")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = map(int, args.crop.split("x"))
    coder = Coder.for_effort(load_checkpoint(args.checkpoint), "default", threads=args.threads)
    if args.z0_ensemble:
        coder.use_steps(coder.plan, coder.ensemble, coder.ensemble_steps, args.z0_ensemble)
    rows = []
    for path in args.images:
        planes = centre_crop(path, width, height).planes
        for text in args.budgets:
            t0 = time.perf_counter()
            _, info = fit_image_context(coder.step_model, planes, budget=parse_budget(text))
            row = {"image": path.name, "budget": text, "seconds": time.perf_counter() - t0,
                   "choice": info.get("choice"), "held_out_bpd_model": info.get("held_out_bpd_model"),
                   "held_out_bpd_fitted": info.get("held_out_bpd_fitted"),
                   "net_bpd": (info.get("saving_bits", 0.0) - info.get("cost_bits", 0.0)) / planes.size}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(args.json_out, {"images": [str(p) for p in args.images], "crop": args.crop,
                               "checkpoint": args.checkpoint, "threads": args.threads,
                               "z0_ensemble": coder.step_model.z0_ensemble}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
