"""Exact NELBO (as `vdmcodec eval` computes it) of one checkpoint on the trainer's held-out
large images, with gamma(0) moved to other values and the network unchanged: is the noise
level at z_0 that training settled on also the best one on images the model did not train on?

    python -m benchmarks.experiments.gamma0_sweep checkpoints/default.pt --gamma0 -7.6 -8.0 -8.4

Only gamma0 moves; gamma1 and the schedule's shape stay, so every gamma_i moves a little.
Photos larger than --max-side are centre-cropped (time).  Training data only: never Kodak.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.steps import StepModel
from vdmcodec.evaluate import image_nelbo
from vdmcodec.train import list_images, load_rgb, split_data


def centre_crop(im, side: int):
    h, w = im.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return im[y : y + side, x : x + side]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--gamma0", type=float, nargs="+", required=True)
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="append one JSON line per gamma0 here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    images = [(f, centre_crop(im, args.max_side)) for f in hold for im in [load_rgb(f)] if min(im.shape[:2]) >= 128]
    model = load_checkpoint(args.checkpoint).model.eval()
    learned = float(model.schedule.gamma0)
    for g0 in args.gamma0:
        with torch.no_grad():
            model.schedule.gamma0.fill_(g0)
        sm = StepModel(model, model.schedule.table(model.steps).numpy())
        per_image = {}
        for f, im in images:
            r = image_nelbo(sm, im)
            per_image[f"{f.parent.name}/{f.name}"] = {"bpd": r["nelbo_bpd"], **r["terms"]}
        mean = sum(v["bpd"] for v in per_image.values()) / len(per_image)
        rec = {"checkpoint": args.checkpoint, "learned_gamma0": learned, "gamma0": g0, "mean_bpd": mean,
               "max_side": args.max_side, "images": per_image}
        print(json.dumps(rec), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
