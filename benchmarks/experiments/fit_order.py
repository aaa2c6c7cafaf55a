"""Does the order of the per-image fits matter?  Context fit first would let compress decide
before the FiLM fit.

    python -m benchmarks.experiments.fit_order IMAGES... --crop 768x512 --json results/fit_order.json

Compress fits the FiLM deltas first and then the pixel-context weights on the FiLM-adapted
network.  Fitting the context weights first (on the model's network) and the FiLM deltas
after would let compress skip the FiLM fit (about 8 s of a Kodak image) where the estimate
with the context fit's reconstruction is already far above the classic file.  For each image
(a centre crop, default effort): the reconstruction bits (one z_0 draw, the coder's calls)
with the FiLM-adapted network and (a) the context weights fitted on it, (b) the context
weights fitted on the model's network; and the share of the file the FiLM fit saves (its
paired estimate), which bounds how far a decision before it may be off.  Seconds of each fit.
Choose on training images, never on the benchmark sets.
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
from vdmcodec.coding.adapt import fit_image_context
from vdmcodec.coding.estimate import estimate_recon_bits
from vdmcodec.coding.film import fit_film


def measure(coder: Coder, name: str, img) -> dict:
    sm, planes = coder.step_model, img.planes
    row = {"image": name, "dims": int(planes.size)}
    t = time.perf_counter()
    context_first, info_first = fit_image_context(sm, planes, budget=coder.fit)
    row["context_first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    film = fit_film(sm, planes, coder.film)
    row["film_s"] = time.perf_counter() - t
    row["film_saving_bits"] = film.saving_bits if film is not None else 0.0
    with sm.adapted(film):
        t = time.perf_counter()
        context_after, _ = fit_image_context(sm, planes, budget=coder.fit)
        row["context_after_film_s"] = time.perf_counter() - t
        row["recon_bits_film_then_context"] = estimate_recon_bits(sm, planes, context_after)
        row["recon_bits_context_then_film"] = estimate_recon_bits(sm, planes, context_first)
    row["recon_bits_context_alone"] = info_first.get("held_out_bpd_fitted", info_first.get("held_out_bpd_model", 0.0)) \
        * planes.size
    row["order_cost"] = row["recon_bits_context_then_film"] / row["recon_bits_film_then_context"] - 1.0
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    p.add_argument("--effort", default="default")
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = map(int, args.crop.split("x"))
    coder = Coder.for_effort(load_checkpoint(args.checkpoint), args.effort, threads=args.threads)
    coder.activate()
    rows = []
    for path in args.images:
        row = measure(coder, path.name, centre_crop(path, width, height))
        rows.append(row)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        write_rows(args.json_out, {"images": [str(q) for q in args.images], "crop": args.crop, "effort": args.effort,
                                   "checkpoint": args.checkpoint, "threads": args.threads}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
