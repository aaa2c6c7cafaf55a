"""Which libjxl settings code photographs smallest for their seconds (the classic codes).

    python -m benchmarks.experiments.jxl_settings IMAGES... --crop 768x512 \
        --settings e10 e9/g3/E3/I100 ... [--rows 64] [--threads 1] [--json OUT]

Each image (a centre crop; with --rows N only its first N rows, as the seed strip) is coded
losslessly with each setting, `eE` the effort, then `gG` (modular groups of 128 << G),
`EN` (earlier channels the MA trees read), `IP` (percent of pixels they learn from), `PN`
(the predictor, 15: all mixed), joined by `/`; every code is decoded and compared.  Prints
bytes and seconds per image and setting and the totals against the first setting.  Choose on training images, never on the
benchmark sets.
"""

from __future__ import annotations

import time

import imagecodecs
import numpy as np

from vdmcodec.coding.jpegxl import JxlSettings, encode_lossless

from .effort_ablation import centre_crop, crop_parser, write_rows


def parse_settings(text: str) -> JxlSettings:
    """`e9/g3/E3/I100` -> JxlSettings(9, 3, 100.0, 3).

    >>> parse_settings("e9/g3/E3/I100")
    JxlSettings(effort=9, group_size=3, tree_percent=100.0, prev_channels=3, predictor=-1)
    """
    fields = {"e": "effort", "g": "group_size", "I": "tree_percent", "E": "prev_channels", "P": "predictor"}
    values = {fields[part[0]]: (float if part[0] == "I" else int)(part[1:]) for part in text.split("/")}
    return JxlSettings(**values)


def main() -> None:
    p = crop_parser(__doc__, effort=False)
    p.add_argument("--settings", nargs="+", required=True)
    p.add_argument("--rows", type=int, default=0, help="code only the first ROWS rows (a seed strip)")
    a = p.parse_args()
    width, height = map(int, a.crop.split("x"))
    rows, totals = [], {s: [0, 0.0] for s in a.settings}
    for path in a.images:
        x = centre_crop(path, width, height).planes
        x = np.ascontiguousarray(x[: a.rows] if a.rows else x)
        line = [path.name]
        for name in a.settings:
            t = time.perf_counter()
            code = encode_lossless(x if x.shape[2] == 3 else x[..., 0], parse_settings(name), a.threads)
            seconds = time.perf_counter() - t
            back = imagecodecs.jpegxl_decode(code)
            assert np.array_equal(back.reshape(x.shape), x), f"{path.name} {name}: not lossless"
            totals[name][0] += len(code)
            totals[name][1] += seconds
            rows.append({"image": path.name, "settings": name, "bytes": len(code), "seconds": seconds,
                         "bpd": 8 * len(code) / x.size})
            line.append(f"{name} {8 * len(code) / x.size:.4f} {seconds:.1f}s")
        print("  ".join(line), flush=True)
    first = totals[a.settings[0]][0]
    for name, (n, seconds) in totals.items():
        print(f"{name:24s} {n:10d} bytes {n / first - 1:+.4f}  {seconds:7.1f} s")
    write_rows(a.json_out, {"crop": a.crop, "rows": a.rows, "threads": a.threads,
                            "images": [str(x) for x in a.images], "settings": a.settings}, rows)


if __name__ == "__main__":
    main()
