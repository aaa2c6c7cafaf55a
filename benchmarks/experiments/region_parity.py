"""Reconstruction bits of the same rows coded in strips that start at different rows and
columns, with the model's pixel context and with the image's own fit (coding.adapt): why
every region starts at an even row (coding.chain.even_rows; docs/RESULTS.md, session 9).

    python -m benchmarks.experiments.region_parity ../shared/data/kodak/kodim02.png

Prints, per weights and strip start (row, column), the mean bits per dim of rows 84-111
(columns 2 on) under p(x | z_0) of the strip, with its 4 context rows below, at one z_0 draw.
A diagnostic, not a benchmark.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding import adapt
from vdmcodec.train import load_rgb

STARTS = ((80, 0), (79, 0), (78, 0), (77, 0), (80, 1), (79, 1))
END, MEASURED = 112, (84, 2)  # strip end row; first row and column measured


def pixel_bits(pc, x: np.ndarray) -> np.ndarray:
    """-log2 P(x) per sub-pixel under the codec's locations and scales (discretised logistic)."""
    loc, scale = pc.params(x)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    up = np.where(x >= 255, 1.0, sig((x + 0.5 - loc) / scale))
    lo = np.where(x <= 0, 0.0, sig((x - 0.5 - loc) / scale))
    return -np.log2(np.maximum(up - lo, 1e-12))


def main(argv=None) -> int:
    path = (argv or sys.argv[1:])[0]
    torch.set_num_threads(2)
    im = load_rgb(path)
    coder = Coder.for_effort(load_checkpoint(None), "default")
    coder.activate()
    sm, g = coder.step_model, coder.step_model.grids
    fitted, info = adapt.fit_image_context(sm, im, budget=coder.fit)
    x = np.ascontiguousarray(im.transpose(2, 0, 1))
    xt = (2.0 * x + 1.0) / 256.0 - 1.0
    noise = np.random.default_rng(0).standard_normal(xt.shape)
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * noise) / g.delta[0]).astype(np.int32)
    for label, weights in (("model", None), (f"fit ({info.get('choice')})", fitted)):
        for r0, c0 in STARTS:
            pc = sm.p_pixels(k0[:, r0:END, c0:], x[:, END : END + 4, c0:], weights)
            bits = pixel_bits(pc, x[:, r0:END, c0:])[:, MEASURED[0] - r0 :, MEASURED[1] - c0 :]
            print(json.dumps({"weights": label, "start": [r0, c0], "bpd": round(float(bits.mean()), 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
