"""How far a JPEG decode's luma is from its JPEG: the quantised DCT coefficients, recovered.

    python -m benchmarks.experiments.jpeg_coefficients IMAGES... [--qualities 75 90 95] [--json OUT]

The lever after coding.ycc (session 23): a JPEG decode is a function of the JPEG's quantised
DCT coefficients, which its JPEG file codes 2-3 times smaller than any lossless code of the
decoded pixels.  Each image goes through Pillow's JPEG (4:2:0) at each quality and back; its
luma plane (coding.ycc.to_planes) is cut into 8x8 blocks, each block's float DCT divided by
the JPEG's own luminance table (read from the file here: an encoder would have to estimate
it from the pixels) and rounded, and libjpeg's integer IDCT (jidctint.c, "islow", restated
below) of those coefficients compared with the block.  Prints the share of blocks given back
exactly, and the JPEG file's bits per sub-pixel (Huffman-optimised) beside coding.ycc's.
Training images only.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numba
import numpy as np
from PIL import Image

from vdmcodec.coding import jpegcoef, ycc
from vdmcodec.coding.jpegcoef import idct_islow

def fdct_blocks(plane):
    """plane (H, W) -> blocks (bh, bw, 8, 8) of DCT coefficients of (plane - 128), edge-padded to x8"""
    H, W = plane.shape
    p = np.pad(plane.astype(np.int64), ((0, -H % 8), (0, -W % 8)), mode="edge")
    return jpegcoef.dct_blocks(p - 128.0).reshape(p.shape[0] // 8, p.shape[1] // 8, 8, 8)


@numba.njit(cache=True)
def check_blocks(plane, coefs, q, care):
    """Which blocks of coefs (bh, bw, 64) the IDCT with table q (64) gives back where care."""
    H, W = plane.shape
    bh, bw = coefs.shape[0], coefs.shape[1]
    ok = np.zeros((bh, bw), np.bool_)
    out = np.zeros((8, 8), np.int64)
    for i in range(bh):
        for j in range(bw):
            idct_islow(coefs[i, j], q, out)
            good = True
            for r in range(8):
                for c in range(8):
                    y, x = i * 8 + r, j * 8 + c
                    if y < H and x < W and care[y, x] and out[r, c] != plane[y, x]:
                        good = False
            ok[i, j] = good
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--qualities", nargs="+", type=int, default=[75, 90, 95])
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = []
    for path in a.images:
        with Image.open(path) as im:
            x0 = np.asarray(im.convert("RGB"))
        for quality in a.qualities:
            buf = io.BytesIO()
            Image.fromarray(x0).save(buf, "JPEG", quality=quality, subsampling=2, optimize=True)
            with Image.open(io.BytesIO(buf.getvalue())) as im:
                x = np.asarray(im.convert("RGB"))
                q = np.array(im.quantization[0], dtype=np.int64).reshape(8, 8)
            planes, escapes = ycc.to_planes(x)
            care = ~(escapes | ((x == 0) | (x == 255)).any(axis=2))
            luma = planes[..., 0].astype(np.int64)
            coefs = np.round(fdct_blocks(luma) / q).astype(np.int64)
            exact = check_blocks(luma, np.ascontiguousarray(coefs.reshape(*coefs.shape[:2], 64)), q.reshape(64), care)
            own = ycc.encode(x)
            row = {"image": path.name, "quality": quality, "blocks_exact": float(exact.mean()),
                   "jpeg_bpd": 8 * len(buf.getvalue()) / x.size, "ycc_bpd": 8 * len(own) / x.size if own else None}
            rows.append(row)
            print(f"{path.name:30s} q{quality}: blocks exact {row['blocks_exact']:.3f}  JPEG {row['jpeg_bpd']:.3f} bpd  "
                  f"ycc {row['ycc_bpd']:.3f} bpd", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"settings": vars(a) | {"images": [str(i) for i in a.images], "json": str(a.json)},
                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
