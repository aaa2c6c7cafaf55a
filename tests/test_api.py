"""The Python API (vdmcodec.api): its docstring examples, real round trips, the CLI's errors."""

from __future__ import annotations

import doctest
import io

import numpy as np
import pytest
from PIL import Image

import vdmcodec
from vdmcodec import api
from vdmcodec.errors import CorruptFileError, NotAnImageError, UnsupportedImageError, UsageError


@pytest.fixture(scope="module")
def model():
    return vdmcodec.load_model(effort="fast", threads=1)


def test_docstring_examples_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 7 and result.failed == 0


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, vdmcodec; print('torch' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("shape", [(9, 14), (10, 7, 3), (6, 11, 4)])
def test_arrays_of_each_shape_come_back_exactly(model, shape):
    rng = np.random.default_rng(sum(shape))
    smooth = np.cumsum(rng.integers(-3, 4, size=shape), axis=1) + 128
    a = np.clip(smooth, 0, 255).astype(np.uint8)
    back = vdmcodec.decompress(vdmcodec.compress(a, model=model), model=model)
    assert back.dtype == np.uint8 and back.shape == a.shape and (back == a).all()


def test_pil_image_keeps_mode_palette_and_metadata(model):
    im = Image.new("P", (12, 5))
    im.putpalette([i % 256 for i in range(768)])
    im.putdata([i % 7 for i in range(60)])
    back = vdmcodec.decompress_image(vdmcodec.compress(im, model=model), model=model)
    assert back.mode == "P" and back.getpalette() == im.getpalette()
    assert (np.asarray(back) == np.asarray(im)).all()

    rgb = Image.fromarray(np.full((6, 8, 3), 90, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    buf = io.BytesIO()
    rgb.save(buf, "PNG", exif=exif)
    src = Image.open(io.BytesIO(buf.getvalue()))
    back = vdmcodec.decompress_image(vdmcodec.compress(src, model=model), model=model)
    assert back.mode == "RGB" and back.info.get("exif") and back.getexif()[0x0112] == 6


@pytest.mark.parametrize("bad,error", [(np.zeros((4, 4), dtype=np.uint16), UnsupportedImageError),
                                       (np.zeros((4, 4, 2), dtype=np.uint8), UnsupportedImageError),
                                       (np.zeros((0, 4), dtype=np.uint8), UnsupportedImageError),
                                       ("kodim01.png", NotAnImageError)])
def test_bad_images_raise_the_clis_errors(bad, error):
    with pytest.raises(error):
        vdmcodec.compress(bad)


def test_bad_bytes_raise_the_clis_errors(model):
    with pytest.raises(CorruptFileError):
        vdmcodec.decompress(b"not a vdmc file at all", model=model)
    with pytest.raises(UsageError, match="archive"):
        from vdmcodec.codec import compress_images
        from vdmcodec.image_io import image_from_pil

        ims = [(f"{i}.png", image_from_pil(Image.new("L", (4, 4), 10 * i))) for i in range(2)]
        vdmcodec.decompress(compress_images(ims, model)[0], model=model)
