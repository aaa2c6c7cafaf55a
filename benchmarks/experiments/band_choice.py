"""What coding some row bands of an image classically (JPEG XL) and the rest bits-back would save.

    python -m benchmarks.experiments.band_choice IMAGES... --crop 768x512 --bands 32 64 128 \\
        --json results/band_choice.json

For each image (a centre crop): the model's bits per row (reconstruction at one z_0 draw with
the image's own context fit, the diffusion term at every step of the default plan with its
ensembles, float network, whole image) and a classic code of every band of B rows on its own
(coding.classic.encode_rows at the whole-image JPEG XL effort).  Reported: the whole image
as JPEG XL, the model's NELBO, the ideal choice per band (the smaller of the two in each),
and what that choice costs when its classic bands are coded as strips (each run of adjacent
classic bands as one strip).  Whether the bits-back file of the rest keeps its NELBO-to-file
ratio is not measured here.  Choose on training images, never on the benchmark sets.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.experiments.effort_ablation import crop_coder, crop_parser, run_on_crops
from vdmcodec.coding.adapt import fit_image_context
from vdmcodec.coding.classic import JXL_IMAGE_SETTINGS, encode_rows
from vdmcodec.coding.estimate import float_step_model
from vdmcodec.coding.steps import LOG2E


def model_bits_by_row(sm, planes: np.ndarray, weights, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, diffusion) bits of each row of (H, W, C) planes."""
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    rng = np.random.default_rng(seed)
    g = sm.grids
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
    recon = sm.p_pixels(k0, weights=weights).bits_map(x).sum(axis=(0, 2))
    diff = np.zeros(x.shape[1])
    for i in range(1, g.T + 1):
        k = np.rint((g.alpha[i] * xt + g.sigma[i] * rng.standard_normal(xt.shape)) / g.delta[i]).astype(np.int32)
        eps, lam = sm.step_outputs(k, i)
        diff += sm.step_kl_nats(xt, k, i, eps, lam).sum(axis=(0, 2)) * LOG2E
    return recon, diff


def classic_bytes(x: np.ndarray) -> int:
    return len(encode_rows(x, jxl_table=JXL_IMAGE_SETTINGS)[1])


def band_choice(x: np.ndarray, row_bits: np.ndarray, band: int) -> dict:
    """The per-band choice on x (C, H, W) given the model's bits per row."""
    h = x.shape[1]
    starts = list(range(0, h, band))
    model = np.array([row_bits[r : r + band].sum() for r in starts])
    classic = np.array([8.0 * classic_bytes(x[:, r : r + band]) for r in starts])
    pick = classic < model
    strips = 0.0  # each run of adjacent classic bands as one strip
    r = 0
    while r < len(starts):
        if pick[r]:
            e = r
            while e + 1 < len(starts) and pick[e + 1]:
                e += 1
            strips += 8.0 * classic_bytes(x[:, starts[r] : min(h, starts[e] + band)])
            r = e + 1
        else:
            r += 1
    return {"band": band, "bands": len(starts), "classic_bands": int(pick.sum()),
            "ideal_bits": float(np.minimum(model, classic).sum()),
            "strips_bits": float(strips + model[~pick].sum()),
            "band_ratio_min": float((model / classic).min()), "band_ratio_max": float((model / classic).max())}


def main(argv=None) -> int:
    p = crop_parser(__doc__, effort=False)
    p.add_argument("--bands", nargs="+", type=int, default=[32, 64, 128])
    args = p.parse_args(argv)
    coder = crop_coder(args)
    sm = float_step_model(coder.step_model)

    def measure(path, img) -> dict:
        planes = img.planes
        x = np.ascontiguousarray(planes.transpose(2, 0, 1))
        t0 = time.perf_counter()
        weights, _ = fit_image_context(sm, planes, budget=coder.fit)
        recon, diff = model_bits_by_row(sm, planes, weights)
        model_s = time.perf_counter() - t0
        whole = 8.0 * classic_bytes(x)
        row = {"image": path.name, "dims": int(planes.size), "model_s": model_s,
               "classic_bpd": whole / planes.size, "nelbo_bpd": float((recon + diff).sum()) / planes.size,
               "recon_bpd": float(recon.sum()) / planes.size, "diffusion_bpd": float(diff.sum()) / planes.size}
        for band in args.bands:
            c = band_choice(x, recon + diff, band)
            row[f"b{band}"] = {**{k: v for k, v in c.items() if not k.endswith("_bits")},
                               "ideal_bpd": c["ideal_bits"] / planes.size, "strips_bpd": c["strips_bits"] / planes.size}
        return row

    run_on_crops(args, measure, {"bands": args.bands})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
