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
def idct_islow(coef, q, out):
    """coef (8,8) int64 quantised, q (8,8) int64; out (8,8) int64 samples 0..255 (clamped)."""
    ws = np.zeros((8, 8), np.int64)
    for col in range(8):
        d = np.empty(8, np.int64)
        for r in range(8):
            d[r] = coef[r, col] * q[r, col]
        if d[1] == 0 and d[2] == 0 and d[3] == 0 and d[4] == 0 and d[5] == 0 and d[6] == 0 and d[7] == 0:
            dc = d[0] << PASS1_BITS
            for r in range(8):
                ws[r, col] = dc
            continue
        z2 = d[2]; z3 = d[6]
        z1 = (z2 + z3) * F0541
        tmp2 = z1 + z3 * (-F1847)
        tmp3 = z1 + z2 * F0765
        z2 = d[0]; z3 = d[4]
        tmp0 = (z2 + z3) << CONST_BITS
        tmp1 = (z2 - z3) << CONST_BITS
        tmp10 = tmp0 + tmp3; tmp13 = tmp0 - tmp3; tmp11 = tmp1 + tmp2; tmp12 = tmp1 - tmp2
        tmp3 = d[1]; tmp2 = d[3]; tmp1 = d[5]; tmp0 = d[7]
        z4 = tmp1 + tmp3; z3 = tmp0 + tmp2; z2 = tmp1 + tmp2; z1 = tmp0 + tmp3
        z5 = (z3 + z4) * F1175
        tmp3 = tmp3 * F1501; tmp2 = tmp2 * F3072; tmp1 = tmp1 * F2053; tmp0 = tmp0 * F0298
        z4 = z4 * (-F0390) + z5; z3 = z3 * (-F1961) + z5
        z1 = z1 * (-F0899); z2 = z2 * (-F2562)
        tmp3 += z1 + z4; tmp2 += z2 + z3; tmp1 += z2 + z4; tmp0 += z1 + z3
        n = CONST_BITS - PASS1_BITS
        ws[0, col] = _descale(tmp10 + tmp3, n); ws[7, col] = _descale(tmp10 - tmp3, n)
        ws[1, col] = _descale(tmp11 + tmp2, n); ws[6, col] = _descale(tmp11 - tmp2, n)
        ws[2, col] = _descale(tmp12 + tmp1, n); ws[5, col] = _descale(tmp12 - tmp1, n)
        ws[3, col] = _descale(tmp13 + tmp0, n); ws[4, col] = _descale(tmp13 - tmp0, n)
    n = CONST_BITS + PASS1_BITS + 3
    for r in range(8):
        w = ws[r]
        if w[1] == 0 and w[2] == 0 and w[3] == 0 and w[4] == 0 and w[5] == 0 and w[6] == 0 and w[7] == 0:
            v = _descale(w[0], PASS1_BITS + 3) + 128
            v = min(max(v, 0), 255)
            for c in range(8):
                out[r, c] = v
            continue
        z2 = w[2]; z3 = w[6]
        z1 = (z2 + z3) * F0541
        tmp0 = (w[0] + w[4]) << CONST_BITS
        tmp3 = z1 + z2 * F0765
        tmp1 = (w[0] - w[4]) << CONST_BITS
        tmp2 = z1 + z3 * (-F1847)
        tmp10 = tmp0 + tmp3; tmp13 = tmp0 - tmp3; tmp11 = tmp1 + tmp2; tmp12 = tmp1 - tmp2
        tmp3 = w[1]; tmp2 = w[3]; tmp1 = w[5]; tmp0 = w[7]
        z4 = tmp1 + tmp3; z3 = tmp0 + tmp2; z2 = tmp1 + tmp2; z1 = tmp0 + tmp3
        z5 = (z3 + z4) * F1175
        tmp3 = tmp3 * F1501; tmp2 = tmp2 * F3072; tmp1 = tmp1 * F2053; tmp0 = tmp0 * F0298
        z4 = z4 * (-F0390) + z5; z3 = z3 * (-F1961) + z5
        z2 = z2 * (-F2562); z1 = z1 * (-F0899)
        tmp3 += z1 + z4; tmp2 += z2 + z3; tmp1 += z2 + z4; tmp0 += z1 + z3
        vals = (tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0, tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3)
        for c in range(8):
            v = _descale(vals[c], n) + 128
            out[r, c] = min(max(v, 0), 255)

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
