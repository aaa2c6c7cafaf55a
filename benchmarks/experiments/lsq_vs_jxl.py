"""The own least-squares code against JPEG XL at its best settings, image by image.

    python -m benchmarks.experiments.lsq_vs_jxl IMAGES... --crop 768x512 [--halve-chroma] \
        [--threads 2] [--json OUT]

Each image (a centre crop) is coded with the own code as coding.classic takes it (coding.lsq
of the pixels, or of their libjpeg YCbCr planes where they are a JPEG decode: coding.ycc) and
with libjxl at the whole-image settings of coding.classic (effort 9, -g 3 -I 100 -E 3); both codes are decoded and
compared.  Prints bits per sub-pixel and seconds per image and the means.  --halve-chroma
first gives the crop the chroma of a camera JPEG or a PhotoCD (YCbCr, Cb and Cr averaged
over 2x2 blocks and scaled back up bilinearly): how the code fares where the colour detail
is at half resolution.  Choose on training images, never on the benchmark sets.
"""

from __future__ import annotations

import time

import imagecodecs
import numpy as np
from PIL import Image

from vdmcodec.coding import classic
from vdmcodec.coding.classic import JXL_IMAGE_SETTINGS, jxl_settings
from vdmcodec.coding.jpegxl import encode_lossless

from .effort_ablation import centre_crop, crop_parser, write_rows


def halve_chroma(x: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 with its JPEG chroma averaged over 2x2 blocks and scaled back up."""
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    rgb = x[:h, :w].astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b

    def halved(c: np.ndarray) -> np.ndarray:
        small = c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32)
        return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float64)

    cb, cr = halved(cb), halved(cr)
    out = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main() -> None:
    p = crop_parser(__doc__, effort=False)
    p.add_argument("--halve-chroma", action="store_true")
    a = p.parse_args()
    width, height = map(int, a.crop.split("x"))
    rows = []
    for path in a.images:
        x = centre_crop(path, width, height).planes
        if a.halve_chroma and x.shape[2] == 3:
            x = halve_chroma(x)
        x = np.ascontiguousarray(x)
        t = time.perf_counter()
        own = classic._own_code(x, a.threads)
        own_s = time.perf_counter() - t
        t = time.perf_counter()
        back = classic.decode_rows(own, x.shape[2], *x.shape[:2])
        own_dec_s = time.perf_counter() - t
        assert np.array_equal(back.transpose(1, 2, 0), x), f"{path.name}: own code not lossless"
        t = time.perf_counter()
        jxl = encode_lossless(x if x.shape[2] == 3 else x[..., 0], jxl_settings(x.shape[0] * x.shape[1],
                                                                              JXL_IMAGE_SETTINGS), a.threads)
        jxl_s = time.perf_counter() - t
        assert np.array_equal(imagecodecs.jpegxl_decode(jxl).reshape(x.shape), x), f"{path.name}: jxl not lossless"
        row = {"image": path.name, "own_code": classic.NAMES[own[0]], "lsq_bpd": 8 * len(own) / x.size, "jxl_bpd": 8 * len(jxl) / x.size,
               "lsq_encode_s": own_s, "lsq_decode_s": own_dec_s, "jxl_encode_s": jxl_s}
        rows.append(row)
        print(f"{path.name:40s} {row['own_code']} {row['lsq_bpd']:.4f} ({own_s:.1f} s, decode {own_dec_s:.1f} s)  "
              f"jxl {row['jxl_bpd']:.4f} ({jxl_s:.1f} s)  {len(own) / len(jxl) - 1:+.2%}", flush=True)
    own_mean = np.mean([r["lsq_bpd"] for r in rows])
    jxl_mean = np.mean([r["jxl_bpd"] for r in rows])
    best = np.mean([min(r["lsq_bpd"], r["jxl_bpd"]) for r in rows])
    ratio = np.mean([r["lsq_bpd"] / r["jxl_bpd"] - 1 for r in rows])
    print(f"mean: lsq {own_mean:.4f}  jxl {jxl_mean:.4f}  smaller of the two {best:.4f}  "
          f"lsq/jxl - 1 {ratio:+.2%}  lsq wins {sum(r['lsq_bpd'] < r['jxl_bpd'] for r in rows)} of {len(rows)}")
    write_rows(a.json_out, {"crop": a.crop, "threads": a.threads, "halve_chroma": a.halve_chroma,
                            "images": [str(x) for x in a.images]}, rows)


if __name__ == "__main__":
    main()
