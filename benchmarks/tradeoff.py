"""Rate/speed trade-off of the diffusion step count T for one trained model.

    python -m benchmarks.tradeoff ../shared/data/kodak --crops 32 --size 128 --steps 32 64 128

Evaluates the NELBO (bpd, exact sum over all T steps, one latent draw per step) on centre
and corner crops, with the model's schedule re-tabulated at each T; the network runs T
times per image in each direction, so coding time scales with T.  The model was trained
at its own T; other T show what re-training at that T would roughly buy or cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.steps import StepModel
from vdmcodec.evaluate import image_nelbo
from vdmcodec.image_io import load_image


def crops_from(folder: Path, count: int, size: int) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png"))
    out = []
    per_image = max(1, -(-count // len(files)))
    for f in files:
        planes = load_image(f).planes
        h, w, _ = planes.shape
        corners = [((h - size) // 2, (w - size) // 2), (0, 0), (h - size, w - size), (0, w - size)]
        for y, x in corners[:per_image]:
            out.append(planes[y : y + size, x : x + size])
    return out[:count]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--crops", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    crops = crops_from(args.folder, args.crops, args.size)
    rows = []
    for T in args.steps:
        table = lm.model.schedule.table(T).numpy()
        sm = StepModel(lm.model, table)
        t0 = time.perf_counter()
        bits = dims = 0.0
        for i, c in enumerate(crops):
            r = image_nelbo(sm, c, seed=i)
            bits += r["nelbo_bits"]
            dims += r["dims"]
        secs = time.perf_counter() - t0
        rows.append({"T": T, "nelbo_bpd": bits / dims, "seconds": secs, "seconds_per_step_per_mp": secs / T / (dims / 3 / 1e6)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"checkpoint": lm.model_id, "sha256": lm.sha256, "crops": len(crops),
                                                   "size": args.size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
