"""Where a file loses to its image's NELBO: the classic seed and the region borders.

For each image (a centre crop of at most 768x512, or 512x768 upright): the image's own
context fit, the whole-image NELBO per row (one draw of every latent, no region borders),
then the image coded as the coder codes it; prints the file's bits, the whole-image NELBO,
and per region (the seed first) its bits against the whole-image NELBO of its rows, and
what a classic seed of 2 ... 64 rows would cost.  A diagnostic for issue 14's "less waste at
the start", not a benchmark; run it on training photos, never on a benchmark set.

    python -m benchmarks.experiments.start_waste ../shared/data/train/photos/lomiri-wallpapers-16.04-sunset.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from benchmarks.experiments.region_parity import pixel_bits
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding import adapt, chain
from vdmcodec.coding.ans import AnsStack
from vdmcodec.coding.classic import encode_rows
from vdmcodec.coding.steps import LOG2E
from vdmcodec.train import load_rgb

SEED_ROWS = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def row_nelbo(sm, x: np.ndarray, weights, seed: int = 0) -> np.ndarray:
    """The whole image's NELBO terms summed per row (bits), as evaluate.image_nelbo draws them."""
    g = sm.grids
    rng = np.random.default_rng(seed)
    xt = chain.unit_pixels(x)
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
    rows = pixel_bits(sm.p_pixels(k0, weights=weights), x).sum(axis=(0, 2))
    for i in range(1, g.T + 1):
        k = np.rint((g.alpha[i] * xt + g.sigma[i] * rng.standard_normal(xt.shape)) / g.delta[i]).astype(np.int32)
        eps, lam = sm.step_outputs(k, i)
        rows += sm.step_kl_nats(xt, k, i, eps, lam).sum(axis=(0, 2)) * LOG2E
    a2, s2 = g.alpha[g.T] ** 2, g.sigma[g.T] ** 2
    return rows + 0.5 * (s2 + a2 * xt**2 - np.log(s2) - 1.0).sum(axis=(0, 2)) * LOG2E


def centre_crop(im: np.ndarray) -> np.ndarray:
    h, w = im.shape[:2]
    H, W = (min(h, 512), min(w, 768)) if w >= h else (min(h, 768), min(w, 512))
    y, x = (h - H) // 2 // 2 * 2, (w - W) // 2
    return np.ascontiguousarray(im[y : y + H, x : x + W])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    coder = Coder.for_effort(load_checkpoint(args.checkpoint), "default", threads=args.threads)
    coder.activate()
    sm = coder.step_model
    for path in args.images:
        t = time.time()
        im = centre_crop(load_rgb(path))
        x = np.ascontiguousarray(im.transpose(2, 0, 1))
        weights, _ = adapt.fit_image_context(sm, im, budget=coder.fit)
        per_row = row_nelbo(sm, x, weights)
        stack = AnsStack()
        regions = chain.encode_image(stack, sm, im, weights=weights)
        print(json.dumps({
            "image": path.split("/")[-1], "shape": list(im.shape), "file_bits": stack.num_bits(),
            "whole_nelbo_bits": round(float(per_row.sum())),
            "regions": [{"rows": list(r.rows), "kind": r.kind, "bits": r.exact_bits,
                         "whole_nelbo_bits": round(float(per_row[r.rows[0]:r.rows[1]].sum()))} for r in regions],
            "classic_seed_bits": {r: 8 * len(encode_rows(x[:, :r])[1]) for r in SEED_ROWS if r <= x.shape[1]},
            "seed_rows_nelbo_bits": {r: round(float(per_row[:r].sum())) for r in SEED_ROWS if r <= x.shape[1]},
            "seconds": round(time.time() - t, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
