"""How well the estimate that lets compress skip the bits-back chain predicts the file.

    python -m benchmarks.experiments.skip_estimate IMAGES... --crop 768x512 --json results/skip_estimate.json

For each image (a centre crop): compress at the default effort with the estimate made but
the chain never skipped (skip_margin inf), and report the estimated and the real bits-back
file, their ratio, the classic file, and the seconds of the estimate and of the whole
compress.  codec.CLASSIC_SKIP_MARGIN is chosen from these ratios; choose on training
images, never on the benchmark sets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.experiments.effort_ablation import centre_crop, write_rows
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder, _classic_of_single, compress_images


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
    rows = []
    for path in args.images:
        img = centre_crop(path, width, height)
        items = [(path.stem, img)]
        classic = _classic_of_single(coder, items)
        t0 = time.perf_counter()
        _, (rep,) = compress_images(items, coder, skip_margin=float("inf"), seed_nelbo=False)
        row = {"image": path.name, "dims": rep.dims, "classic_bytes": len(classic),
               "bitsback_bytes": rep.bitsback_bytes, "estimated_bytes": rep.estimated_bytes,
               "estimate_ratio": rep.estimated_bytes / rep.bitsback_bytes,
               "bitsback_over_classic": rep.bitsback_bytes / len(classic),
               "estimate_s": rep.estimate_s, "compress_s": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_rows(args.json_out, {"images": [str(q) for q in args.images], "crop": args.crop, "effort": args.effort,
                                   "checkpoint": args.checkpoint, "threads": args.threads}, rows)  # after each image
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
