"""What the exact network costs: NELBO and seconds of the float and the exact eps network.

Exports an ExactNet (vdmcodec.model.exact_net) from the shipped model with calibration
images (never a benchmark set), then prints the NELBO (model weights, default plan, one
latent draw) of centre crops under both, and the seconds of one network call on a
--time-side image under both.

    python -m benchmarks.experiments.exact_nelbo --images ../shared/data/train/lossless-misc/waterloo_sail.png \\
        --calibrate ../shared/data/train/photos/lomiri-wallpapers-16.04-Bridge.png

A diagnostic, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.evaluate import image_nelbo
from vdmcodec.model.exact_net import export_exact

from .int8_ptq import crop


def seconds_per_call(fns: dict, reps: int = 5) -> dict:
    """Median seconds of each callable, calls interleaved (a busy moment hits both alike)."""
    times = {k: [] for k in fns}
    for k, fn in fns.items():
        fn()
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--calibrate", nargs="+", required=True)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--calibrate-side", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bits", default="", help="activation bits per resolution, e.g. quarter=8,half=12,full=12")
    p.add_argument("--min-weight-bits", type=int, default=6)
    p.add_argument("--time-side", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--no-float", action="store_true", help="skip the float network's NELBO")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(None)
    coder = Coder.for_effort(lm, "default", adapt_context=False)
    sm = coder.step_model
    bits = {k: int(v) for k, v in (kv.split("=") for kv in args.bits.split(",") if kv)}
    t = time.perf_counter()
    ex = export_exact(lm.model.net, lm.gamma_table.numpy(), [crop(c, args.calibrate_side) for c in args.calibrate],
                      in_bits=bits, min_weight_bits=args.min_weight_bits)
    export_s = time.perf_counter() - t
    print(json.dumps({"export_s": round(export_s, 1), "groups": {n: ex.layers[n].groups for n in ex.names},
                      "bits": bits, "min_weight_bits": args.min_weight_bits}), flush=True)
    images = [(path.split("/")[-1], crop(path, args.side)) for path in args.images]
    totals = {}
    for label in (("exact",) if args.no_float else ("float", "exact")):
        sm.exact_net = ex if label == "exact" else None
        bits_sum, dims = 0.0, 0
        for name, planes in images:
            r = image_nelbo(sm, planes, seed=0)
            bits_sum, dims = bits_sum + r["nelbo_bits"], dims + r["dims"]
            print(json.dumps({"variant": label, "image": name, "nelbo_bpd": round(r["nelbo_bpd"], 4),
                              "terms": {k: round(v, 4) for k, v in r["terms"].items()}}), flush=True)
        totals[label] = bits_sum / dims
    h, w = args.time_side
    z = (torch.round(torch.randn(1, 3, h, w) * 256) / 256).contiguous(memory_format=torch.channels_last)
    net = sm.model.net
    with torch.no_grad():
        secs = seconds_per_call({"float": lambda: net(z, torch.tensor([float(lm.gamma_table[8])]), with_aux=True),
                                 "exact": lambda: ex(z, 8, with_aux=True)})
    print(json.dumps({"mean_nelbo_bpd": {k: round(v, 4) for k, v in totals.items()},
                      "seconds_per_call": secs,
                      "time_side": [h, w]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
