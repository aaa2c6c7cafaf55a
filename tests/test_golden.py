"""Files written by earlier code still decode with this code, pixel for pixel.

tests/data/s3_two_pass.vdmc is an archive (a 26x22 RGB crop and a 17x13 grey crop) written
by session 3's code (commit 1f4cbec) with tests/data/s3_tiny_two_pass.pt, a tiny model with
the two-pass pixel context and scrambled weights; s4_four_pass.vdmc the same crops written by
session 4's code with a four-pass model; s6_v2_context_ensemble.vdmc (format version 2) the
same crops with the four-pass model, each image's own pixel-context weights, the step plan
0, 1, 2, 4, 8 and a 2-call network ensemble on its first two steps, written by session 6's code.  Any change to the container, the coding chain or
the pixel decoder's arithmetic that would strand such files fails here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import decompress_bytes
from vdmcodec.container import unpack_container

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("archive,checkpoint,passes", [("s3_two_pass.vdmc", "s3_tiny_two_pass.pt", 2),
                                                       ("s4_four_pass.vdmc", "s4_tiny_four_pass.pt", 4),
                                                       ("s6_v2_context_ensemble.vdmc", "s4_tiny_four_pass.pt", 4)])
def test_archives_of_earlier_sessions_decode_exactly(archive, checkpoint, passes):
    ckpt = DATA / checkpoint
    assert load_checkpoint(ckpt).model.cfg.context_passes == passes  # s3: a config without the field
    images = dict(decompress_bytes((DATA / archive).read_bytes(), checkpoint=str(ckpt)))
    assert set(images) == {"s3_rgb.png", "s3_grey.png"}
    for name, img in images.items():
        with Image.open(DATA / name) as im:
            want = np.asarray(im)
        got = img.planes if img.mode != "L" else img.planes[:, :, 0]
        assert img.mode == ("RGB" if want.ndim == 3 else "L")
        np.testing.assert_array_equal(got, want)


def test_version_2_golden_file_uses_the_new_fields():
    data = (DATA / "s6_v2_context_ensemble.vdmc").read_bytes()
    header, sections = unpack_container(data)
    assert int.from_bytes(data[8:10], "little") == 2
    assert header["compute"]["ensemble"] == 2 and header["compute"]["ensemble_steps"] == 2
    assert header["coder"]["plan"] == [0, 1, 2, 4, 8] and header["coder"]["T"] == 4
    assert [e["pixel_context"] for e in header["images"]] == ["context0", "context1"]
    assert (len(sections["context0"]), len(sections["context1"])) == (687, 79)
