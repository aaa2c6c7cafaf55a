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

from vdmcodec.coding import ycc

CONST_BITS, PASS1_BITS = 13, 2
F0298, F0390, F0541, F0765, F0899, F1175 = 2446, 3196, 4433, 6270, 7373, 9633
F1501, F1847, F1961, F2053, F2562, F3072 = 12299, 15137, 16069, 16819, 20995, 25172

@numba.njit(cache=True)
def _descale(x, n):
    return (x + (1 << (n - 1))) >> n

@numba.njit(cache=True)
def _butterfly(d, out):
    """jidctint.c's 1-D pass on d[0..7] (dequantised, or the first pass's outputs): out[k] =
    the k-th output before its descale (scaled by 2^CONST_BITS)."""
    z1 = (d[2] + d[6]) * F0541
    tmp2 = z1 + d[6] * (-F1847)
    tmp3 = z1 + d[2] * F0765
    tmp0 = (d[0] + d[4]) << CONST_BITS
    tmp1 = (d[0] - d[4]) << CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    tmp3, tmp2, tmp1, tmp0 = d[1], d[3], d[5], d[7]
    z4, z3, z2, z1 = tmp1 + tmp3, tmp0 + tmp2, tmp1 + tmp2, tmp0 + tmp3
    z5 = (z3 + z4) * F1175
    tmp3, tmp2, tmp1, tmp0 = tmp3 * F1501, tmp2 * F3072, tmp1 * F2053, tmp0 * F0298
    z4 = z4 * (-F0390) + z5
    z3 = z3 * (-F1961) + z5
    z1 = z1 * (-F0899)
    z2 = z2 * (-F2562)
    tmp3 += z1 + z4
    tmp2 += z2 + z3
    tmp1 += z2 + z4
    tmp0 += z1 + z3
    out[0], out[7] = tmp10 + tmp3, tmp10 - tmp3
    out[1], out[6] = tmp11 + tmp2, tmp11 - tmp2
    out[2], out[5] = tmp12 + tmp1, tmp12 - tmp1
    out[3], out[4] = tmp13 + tmp0, tmp13 - tmp0


@numba.njit(cache=True)
def _ac_zero(d):
    return d[1] == 0 and d[2] == 0 and d[3] == 0 and d[4] == 0 and d[5] == 0 and d[6] == 0 and d[7] == 0


@numba.njit(cache=True)
def idct_islow(coef, q, out):
    """libjpeg's integer IDCT ("islow") of quantised coefficients coef (8, 8) with table q
    (8, 8), both int64, into out (8, 8): samples 0..255 (clamped).  Columns first, then rows,
    each a 1-D pass; a column or row whose AC terms are zero is its DC term alone."""
    ws = np.zeros((8, 8), np.int64)
    d = np.empty(8, np.int64)
    t = np.empty(8, np.int64)
    for col in range(8):
        for r in range(8):
            d[r] = coef[r, col] * q[r, col]
        if _ac_zero(d):
            for r in range(8):
                ws[r, col] = d[0] << PASS1_BITS
            continue
        _butterfly(d, t)
        for r in range(8):
            ws[r, col] = _descale(t[r], CONST_BITS - PASS1_BITS)
    for r in range(8):
        if _ac_zero(ws[r]):
            v = min(max(_descale(ws[r, 0], PASS1_BITS + 3) + 128, 0), 255)
            for c in range(8):
                out[r, c] = v
            continue
        _butterfly(ws[r], t)
        for c in range(8):
            out[r, c] = min(max(_descale(t[c], CONST_BITS + PASS1_BITS + 3) + 128, 0), 255)


# forward DCT (float), JPEG scaling
_C = np.array([[np.sqrt(1 / 8) if k == 0 else 0.5 * np.cos((2 * n + 1) * k * np.pi / 16) for n in range(8)] for k in range(8)])
def fdct_blocks(plane):
    """plane (H, W) -> blocks (bh, bw, 8, 8) of DCT coefficients of (plane - 128), edge-padded to x8"""
    H, W = plane.shape
    bh, bw = -(-H // 8), -(-W // 8)
    p = np.pad(plane.astype(float) - 128, ((0, bh * 8 - H), (0, bw * 8 - W)), mode='edge')
    B = p.reshape(bh, 8, bw, 8).transpose(0, 2, 1, 3)
    return np.einsum('ui,abij,vj->abuv', _C, B, _C)

@numba.njit(cache=True)
def check_blocks(plane, coefs, q, care):
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
            exact = check_blocks(luma, coefs, q, care)
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
