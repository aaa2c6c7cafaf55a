"""Write JPEG-decoded copies of a folder of images: the kind of PNG most users hold.

    python -m benchmarks.jpeg_decoded SRC_DIR OUT_DIR [--quality 90] [--subsampling 2]

Each image goes through Pillow's JPEG encoder (libjpeg-turbo; --subsampling 2 = 4:2:0, as a
camera stores it, 0 = 4:4:4) and back through its decoder, and is saved as PNG under the same
name.  A benchmark of such copies (python -m benchmarks.compare OUT_DIR ...) measures how a
codec fares on JPEG decodes without training on them: vdmcodec codes them in libjpeg's own
YCbCr planes (coding.ycc).  The copies are made fresh by this command, never shipped.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image


def jpeg_copy(src: Path, dst: Path, quality: int, subsampling: int) -> None:
    with Image.open(src) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=subsampling)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        im.convert("RGB").save(dst, "PNG")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--subsampling", type=int, default=2, choices=(0, 1, 2))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for src in sorted(a.src.glob("*.png")):
        jpeg_copy(src, a.out / src.name, a.quality, a.subsampling)
        print(src.name)


if __name__ == "__main__":
    main()
