"""Files written by earlier code still decode with this code, pixel for pixel.

tests/data/s3_two_pass.vdmc is an archive (a 26x22 RGB crop and a 17x13 grey crop) written
by session 3's code (commit 1f4cbec) with tests/data/s3_tiny_two_pass.pt, a tiny model with
the two-pass pixel context and scrambled weights.  Any change to the container, the coding
chain or the pixel decoder's arithmetic that would strand such files fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import decompress_bytes

DATA = Path(__file__).resolve().parent / "data"


def test_session3_two_pass_archive_decodes_exactly():
    ckpt = DATA / "s3_tiny_two_pass.pt"
    assert load_checkpoint(ckpt).model.cfg.context_passes == 2  # an old config without the field
    images = dict(decompress_bytes((DATA / "s3_two_pass.vdmc").read_bytes(), checkpoint=str(ckpt)))
    assert set(images) == {"s3_rgb.png", "s3_grey.png"}
    for name, img in images.items():
        with Image.open(DATA / name) as im:
            want = np.asarray(im)
        got = img.planes if img.mode != "L" else img.planes[:, :, 0]
        assert img.mode == ("RGB" if want.ndim == 3 else "L")
        np.testing.assert_array_equal(got, want)
