"""Can the FiLM fit tell early that it will not pay?  Its estimate after some of its steps.

    python -m benchmarks.experiments.film_probe IMAGES... --crop 768x512 --json results/film_probe.json

The default effort's FiLM fit (coding.film) takes 200 Adam steps, about 8 s of a Kodak
image, and on about half of photographs its deltas do not pay for their section and are
dropped.  For each image (a centre crop): the fit's paired saving estimate and the deltas'
cost (bits) after 25, 50, ... steps, quantised as they would be sent, and after all of them;
whether the full fit was kept (saving above KEEP_IF_SAVING_OVER_COST times cost).  A fit may
stop at a probe where no image whose full fit was kept was that far below the keep line
(film.PROBE_KEEP_SHARE).  Choose on training images, never on the benchmark sets.
"""

from __future__ import annotations

import dataclasses
import time

from benchmarks.experiments.effort_ablation import measure_crops
from vdmcodec.codec import Coder
from vdmcodec.coding.film import KEEP_IF_SAVING_OVER_COST, fit_deltas

PROBES = (25, 50, 75, 100, 125, 150)


def measure(coder: Coder, name: str, img) -> dict:
    seen = {}

    def record(step: int, saving: float, cost: float) -> bool:
        seen[step] = (saving, cost)
        return True

    budget = dataclasses.replace(coder.film, probe_at=PROBES)
    t = time.perf_counter()
    film, saving, cost = fit_deltas(coder.step_model, img.planes, budget, probe=record)
    row = {"image": name, "film_s": time.perf_counter() - t, "steps": budget.steps, "saving_bits": saving,
           "cost_bits": cost, "kept": bool(any(k.any() for k in film.steps) and saving >= KEEP_IF_SAVING_OVER_COST * cost)}
    for step, (s, c) in seen.items():
        # the estimate so far as a share of what keeping the deltas needs
        row[f"keep_share_{step}"] = s / (KEEP_IF_SAVING_OVER_COST * c)
    row["keep_share_final"] = saving / (KEEP_IF_SAVING_OVER_COST * cost)
    return row


def main(argv=None) -> int:
    rows = measure_crops(__doc__, measure, argv, {"probes": list(PROBES)})
    for step in PROBES:
        kept = [r[f"keep_share_{step}"] for r in rows if r["kept"]]
        dropped = [r[f"keep_share_{step}"] for r in rows if not r["kept"]]
        print(f"after {step} steps: kept fits' least share {min(kept, default=float('nan')):.3f}; "
              f"dropped fits below 0.5: {sum(d < 0.5 for d in dropped)} of {len(dropped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
