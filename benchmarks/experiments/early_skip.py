"""How much the per-image fits move the file estimate: may compress skip the chain before them?

    python -m benchmarks.experiments.early_skip IMAGES... --crop 768x512 --json results/early_skip.json

For each image (a centre crop), at the default effort: the classic file; the estimate
before any fit (the model's own network and context weights: reconstruction per row at one
z_0 draw, the diffusion estimate, the classic bands at their effort-9 sizes); then the FiLM
fit (with its paired saving estimate), the context fit, and the estimate as compress makes it
after them (codec._estimate_file: the context fit's reconstruction, the first diffusion
estimate less the FiLM fit's saving), and with --full-diffusion against the diffusion
estimated again with the FiLM (the session-17 estimator).  Per band of rows: the model's bits
before and after the fits and the band's classic bits.  Seconds of each part.
A skip before the fits is safe where the estimate before them is above the skip line by more
than the fits ever take off; choose the margin on training
images, never on benchmark sets.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.experiments.effort_ablation import crop_coder, crop_parser, run_on_crops
from vdmcodec.codec import (BITSBACK_OVER_ESTIMATE, Coder, ImageReport, _classic_of_single,
                            _estimate_file, first_look, model_rows_after_fits)
from vdmcodec.coding.bands import band_sums
from vdmcodec.coding.adapt import fit_image_context, pack_deltas
from vdmcodec.coding.estimate import estimate_diffusion
from vdmcodec.coding.film import KEEP_IF_SAVING_OVER_COST, FilmDeltas, fit_deltas, pack_film


def measure(coder: Coder, name: str, img, full_diffusion: bool = False) -> dict:
    sm, planes = coder.step_model, img.planes
    t = time.perf_counter()
    classic = _classic_of_single(coder, [(Path(name).stem, img)])  # named as compress names it
    row = {"image": name, "dims": int(planes.size), "classic_bytes": len(classic),
           "classic_s": time.perf_counter() - t}
    t = time.perf_counter()
    look = first_look(coder, img)
    row.update(first_s=time.perf_counter() - t, first_recon_bits=look.recon_bits,
               first_diffusion_bits=look.diffusion.bits, first_model_bits=look.model_bits,
               first_mixed_bits=look.mixed_bits, first_bytes=look.estimated_bytes(0),
               first_strip_bits=look.strip_bits)
    t = time.perf_counter()
    film, saving, cost = fit_deltas(sm, planes, coder.film)
    if not any(k.any() for k in film.steps) or saving < KEEP_IF_SAVING_OVER_COST * cost:
        film, saving = None, 0.0
    else:
        film = FilmDeltas(film.steps, saving)
    row.update(film_s=time.perf_counter() - t, film_saving_bits=saving, film_kept=film is not None)
    report = ImageReport(name, img.width, img.height, img.mode, int(planes.size), "bitsback")
    report.film_bytes = len(pack_film(film)) if film is not None else 0
    with sm.adapted(film):
        t = time.perf_counter()
        weights, info = fit_image_context(sm, planes, budget=coder.fit)
        row.update(context_s=time.perf_counter() - t, held_out_bpd_model=info.get("held_out_bpd_model"),
                   held_out_bpd_fitted=info.get("held_out_bpd_fitted"))
        report.context_bytes = len(pack_deltas(sm, weights)) if weights is not None else 0
        t = time.perf_counter()
        plans = _estimate_file(coder, img, weights, info, film, report, look)
        row.update(after_s=time.perf_counter() - t, after_bytes=report.estimated_bytes,
                   after_strip_bits=sum(p.bits for p in plans),
                   after_recon_bits=report.terms["recon"], after_diffusion_bits=report.terms["diffusion"])
        if look.classic_bands is not None:  # per band: what the first look's floor must stay under
            rows = model_rows_after_fits(look, info, report.terms["recon"], look.diffusion_less(saving))
            row.update(classic_band_bits=look.classic_bands.tolist(), first_band_bits=band_sums(look.model_rows).tolist(),
                       after_band_bits=band_sums(rows).tolist())
        if full_diffusion:
            t = time.perf_counter()
            row["full_diffusion_bits"] = estimate_diffusion(sm, planes, film).bits  # estimated again, with the FiLM
            row["full_diffusion_s"] = time.perf_counter() - t
    recon_bpd = info.get("held_out_bpd_fitted" if weights is not None else "held_out_bpd_model")
    row["after_over_first"] = row["after_bytes"] / row["first_bytes"]
    row["first_over_classic"] = row["first_bytes"] / len(classic)
    row["after_over_classic"] = row["after_bytes"] / len(classic)
    # the diffusion after FiLM as the first look less the FiLM fit's own saving estimate (what
    # compress uses), against the diffusion estimated again with the FiLM
    if full_diffusion:
        row["derived_diffusion_err"] = row["after_diffusion_bits"] / row["full_diffusion_bits"] - 1.0
        row["derived_over_full_file"] = (row["after_diffusion_bits"] - row["full_diffusion_bits"]) / 8.0 / row["after_bytes"]
    if "first_band_bits" in row:
        ratio = np.array(row["after_band_bits"]) / np.array(row["first_band_bits"])
        row["band_after_over_first_min"] = float(ratio.min())  # the most the fits took off any band
    row["recon_after_over_first"] = recon_bpd * planes.size / look.recon_bits
    return row


def main(argv=None) -> int:
    parser = crop_parser(__doc__)
    parser.add_argument("--full-diffusion", action="store_true",
                        help="also estimate the diffusion term again with the FiLM deltas (5 s per image)")
    args = parser.parse_args(argv)
    coder = crop_coder(args)
    rows = run_on_crops(args, lambda path, img: measure(coder, path.name, img, args.full_diffusion),
                        {"bitsback_over_estimate": BITSBACK_OVER_ESTIMATE, "full_diffusion": args.full_diffusion})
    if rows:
        ratios = np.array([r["after_over_first"] for r in rows])
        print(f"after/first: min {ratios.min():.4f} mean {ratios.mean():.4f} max {ratios.max():.4f}")
        bands = [r["band_after_over_first_min"] for r in rows if "band_after_over_first_min" in r]
        if bands:
            print(f"least band after/first: {min(bands):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
