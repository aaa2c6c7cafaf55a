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

import time

from benchmarks.experiments.effort_ablation import measure_crops
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
    measure_crops(__doc__, measure, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
