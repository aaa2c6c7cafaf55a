"""Which of the context fit's candidates wins, and by how much: may the default fit only one?

    python -m benchmarks.experiments.fit_candidates IMAGES... --crop 768x512 --json results/fit_candidates.json

The default effort's context fit (coding.adapt.fit_context) fits two candidates of 100 Adam
steps each, about 2.7 s apiece on a 768x512 image: the linear weights with gains on the
network's outputs ("linear"), and the same with the context network's last layers ("head").
Each is judged on the whole image and the best net saving wins.  For each image (a centre
crop, after the FiLM fit as compress makes it): every candidate's held-out saving net of its
side data, in bits, the choice, and the fit's seconds.  Choose on training images, never on
the benchmark sets.
"""

from __future__ import annotations

import time

from benchmarks.experiments.effort_ablation import measure_crops
from vdmcodec.codec import Coder
from vdmcodec.coding.adapt import fit_image_context
from vdmcodec.coding.film import fit_film


def measure(coder: Coder, name: str, img) -> dict:
    sm, planes = coder.step_model, img.planes
    film = fit_film(sm, planes, coder.film)
    with sm.adapted(film):
        t = time.perf_counter()
        _, info = fit_image_context(sm, planes, budget=coder.fit)
        seconds = time.perf_counter() - t
    row = {"image": name, "dims": int(planes.size), "context_s": seconds, "choice": info.get("choice")}
    for kind, cand in info.get("candidates", {}).items():
        row[f"{kind}_net_bits"] = cand["net_bits"]
    if "linear_net_bits" in row and "head_net_bits" in row:
        # what choosing the head without trying the linear weights would cost (bits; >= 0)
        row["head_only_loss_bits"] = max(0.0, max(row["linear_net_bits"], 0.0) - max(row["head_net_bits"], 0.0))
    return row


def main(argv=None) -> int:
    measure_crops(__doc__, measure, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
