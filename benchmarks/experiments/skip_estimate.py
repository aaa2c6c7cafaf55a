"""How well the estimate that lets compress skip the bits-back chain predicts the file.

    python -m benchmarks.experiments.skip_estimate IMAGES... --crop 768x512 --json results/skip_estimate.json

For each image (a centre crop): compress at the default effort with the estimate made but
the chain never skipped (skip_margin inf), and report the estimated and the real bits-back
file, their ratio, the classic file, and the seconds of the estimate and of the whole
compress.  codec.CLASSIC_SKIP_MARGIN is chosen from these ratios; choose on training
images, never on the benchmark sets.
"""

from __future__ import annotations

import time

from benchmarks.experiments.effort_ablation import crop_coder, crop_parser, run_on_crops
from vdmcodec.codec import _classic_of_single, compress_images


def main(argv=None) -> int:
    args = crop_parser(__doc__).parse_args(argv)
    coder = crop_coder(args)

    def measure(path, img) -> dict:
        items = [(path.stem, img)]
        classic = _classic_of_single(coder, items)
        t0 = time.perf_counter()
        _, (rep,) = compress_images(items, coder, skip_margin=float("inf"), seed_nelbo=False)
        return {"image": path.name, "dims": rep.dims, "classic_bytes": len(classic),
                "bitsback_bytes": rep.bitsback_bytes, "estimated_bytes": rep.estimated_bytes,
                "estimate_ratio": rep.estimated_bytes / rep.bitsback_bytes,
                "bitsback_over_classic": rep.bitsback_bytes / len(classic),
                "estimate_s": rep.estimate_s, "compress_s": time.perf_counter() - t0}

    run_on_crops(args, measure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
