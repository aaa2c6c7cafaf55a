"""Reconstruction term on one 128x128 crop, with and without the pixel context, for one or
more checkpoints: the coder's tables, the training decoder, and the decoder without context.

    python -m benchmarks.experiments.decoder_context_gain OLD.pt checkpoints/default.pt \\
        --image ../shared/data/train/cbsd68/119082.png --image ../shared/data/kodak/kodim03.png

A diagnostic (one z_0 draw at the coding grid, crop at rows and columns 100-228), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.steps import StepModel
from vdmcodec.image_io import load_image
from vdmcodec.model.vdm import discretized_logistic_logp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--image", action="append", required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.checkpoints:
        lm = load_checkpoint(spec)
        sm = StepModel(lm.model, lm.gamma_table.numpy())
        g = sm.grids
        for path in args.image:
            x = np.ascontiguousarray(load_image(path).planes[100:228, 100:228].transpose(2, 0, 1))
            xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
            k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * np.random.default_rng(0).standard_normal(xt.shape))
                         / g.delta[0]).astype(np.int32)
            coder = sm.p_pixels(k0).bits(x) / x.size
            z0 = torch.from_numpy(k0 * g.delta[0]).float()[None]
            g0 = torch.tensor(g.gamma[0], dtype=torch.float64)
            xx = torch.from_numpy(x.astype(np.int64))[None]
            with torch.no_grad():
                train = -discretized_logistic_logp(xx, *lm.model.decoder_params(z0, g0, x=xx)).mean() / math.log(2.0)
                ctx = lm.model.cfg.pixel_context
                lm.model.cfg.pixel_context = False
                try:
                    base = -discretized_logistic_logp(xx, *lm.model.decoder_params(z0, g0)).mean() / math.log(2.0)
                finally:
                    lm.model.cfg.pixel_context = ctx
            print(json.dumps({"checkpoint": spec, "model_id": lm.model_id, "image": path, "gamma0": g.gamma[0],
                              "recon_bpd_coder": coder, "recon_bpd_training": float(train),
                              "recon_bpd_without_context": float(base)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
