"""Reconstruction bits per pass and channel of the pixel decoder on the context trainer's
held-out crops (every 20th training file), for one or more models: where p(x | z_0) spends.

    python -m benchmarks.experiments.recon_by_pass checkpoints/default.pt runs/ctx32/state.pt \\
        --data ../shared/data/train

A diagnostic (one z_0 draw per crop, teacher forced), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.vdm import VDM, VDMConfig, discretized_logistic_logp, pass_map, pixels_to_unit
from vdmcodec.train import eval_batches, list_images, load_rgb, split_data
from vdmcodec.train_context import decoder_cache


def load_any(spec: str) -> VDM:
    """A shipped checkpoint, or a train_context state.pt."""
    blob = torch.load(spec, map_location="cpu", weights_only=False)
    if blob.get("format") == "vdmcodec-checkpoint":
        return load_checkpoint(spec).model
    model = VDM(VDMConfig.from_dict(blob["config"]))
    model.load_state_dict(blob["model"])
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--max-images", type=int, default=12)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, hold, _ = split_data(list_images(args.data), 20)  # the trainers' held-out files
    crops = eval_batches([load_rgb(f) for f in hold], 128, max_large=args.max_images)[0]
    for spec in args.models:
        model = load_any(spec)
        with torch.no_grad():
            cache = decoder_cache(model, crops, seed=12345)
            x = cache["x"].long()
            loc, scale = model.context_params(pixels_to_unit(x), cache["loc"], cache["scale"], cache["coef"])
            bits = -discretized_logistic_logp(x, loc, scale) / math.log(2.0)
        pm = pass_map(x.shape[2], x.shape[3], model.cfg.context_passes)
        rows = {}
        for q in range(model.cfg.context_passes):
            sel = bits[:, :, pm == q]
            rows[f"pass{q}"] = [round(float(sel[:, c].mean()), 4) for c in range(x.shape[1])]
        print(json.dumps({"model": spec, "crops": int(x.shape[0]), "recon_bpd": round(float(bits.mean()), 4),
                          "bits_per_pixel_by_pass_rgb": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
