"""coding.lsq: the own least-squares code, exact on every image and close to its ideal bits."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, noise_array
from vdmcodec.coding import classic, lsq, lsqcm
from vdmcodec.coding.classic import MODULAR_BEST
from vdmcodec.coding.jpegxl import JxlSettings, encode_lossless


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(REPO / "examples" / "chelsea-128x96.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def assert_lsq_roundtrip(x: np.ndarray, model: int = lsq.MODEL_LOGISTIC) -> bytes:
    """The shared round-trip helper: encode, decode, compare every pixel."""
    planes = x.reshape(x.shape[0], x.shape[1], -1)
    data = lsq.encode(x, model=model)
    back = lsq.decode(data, *planes.shape, model=model)
    np.testing.assert_array_equal(back, planes)
    return data


MODELS = list(lsq.MODELS)


def test_docstring_examples_run():
    assert doctest.testmod(lsq, raise_on_error=True).attempted > 0
    assert doctest.testmod(lsqcm, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("grey", [False, True])
def test_the_mixed_model_codes_photographs_smaller_than_the_logistic(photo, grey):
    """On a 128x128 crop of a film scan that was never a JPEG (training data) by more than
    1% (1.4% and 1.6%: the mixers learn as they go, so larger images gain more, 1-5% at
    512x512), and on the 128x96 example, a JPEG decode, at all."""
    with Image.open(REPO / "tests" / "data" / "s26_house_128.png") as im:
        house = np.asarray(im.convert("RGB"), dtype=np.uint8)
    for x, most in ((house, 0.99), (photo, 1.0)):
        x = np.ascontiguousarray(x[..., 1]) if grey else x
        mixed = assert_lsq_roundtrip(x, lsq.MODEL_MIXED)
        assert len(mixed) < most * len(lsq.encode(x))


def test_the_pointer_contexts_code_a_resized_photograph_smaller_than_the_mixed_model():
    """Model 3 adds contexts of the value each neighbour and simple predictor points at: on
    a box-downsampled JPEG photograph (training data, a 160x160 crop) by more than 0.5%
    (0.9% on this crop; 1-3% on whole ones, docs/RESULTS.md session 27), grey or colour."""
    with Image.open(REPO / "tests" / "data" / "s27_monastery_160.png") as im:
        x = np.asarray(im.convert("RGB"), dtype=np.uint8)
    for planes in (x, np.ascontiguousarray(x[..., 1])):
        pointers = assert_lsq_roundtrip(planes, lsq.MODEL_POINTERS)
        assert len(pointers) < 0.995 * len(lsq.encode(planes, model=lsq.MODEL_MIXED))


def test_unknown_models_are_refused(photo):
    with pytest.raises(ValueError, match="unknown lsq model"):
        lsq.encode(photo, model=4)
    with pytest.raises(ValueError, match="unknown lsq model"):
        lsq.decode(lsq.encode(photo), *photo.shape, model=0)


def test_squash_and_stretch_are_inverse_and_monotone():
    d = np.arange(-2047, 2048)
    p = np.array([lsqcm.squash(int(v)) for v in d])
    assert (np.diff(p) >= 0).all() and p[0] >= 0 and p[-1] <= 4095
    assert all(lsqcm.squash(int(lsqcm.STRETCH[v])) == v for v in np.unique(p))
    mid = np.abs(d) < 1024  # where squash is steep, stretch undoes it to within a step
    assert np.abs(lsqcm.STRETCH[p[mid]] - d[mid]).max() <= 4
    assert (np.diff(lsqcm.STRETCH) >= 0).all()


@pytest.mark.parametrize("grey", [False, True])
def test_a_photograph_round_trips_smaller_than_jpeg_xl_at_its_best_settings(photo, grey):
    x = np.ascontiguousarray(photo[..., 1]) if grey else photo
    data = assert_lsq_roundtrip(x)
    best_jxl = encode_lossless(x, JxlSettings(9, **MODULAR_BEST))
    assert len(data) < len(best_jxl)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 40, 3), (40, 1, 3), (3, 2, 1), (33, 47, 3)])
def test_odd_shapes_round_trip(shape, model):
    assert_lsq_roundtrip(noise_array(shape[0], shape[1], shape[2], seed=sum(shape)).reshape(shape), model)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("value", [0, 255, 17])
def test_flat_images_and_the_value_range_ends_round_trip_in_few_bytes(value, model):
    data = assert_lsq_roundtrip(np.full((40, 50, 3), value, dtype=np.uint8), model)
    assert len(data) < 3 * lsq.BINS + 200  # the scale table and a few hundred bits


@pytest.mark.parametrize("model", MODELS)
def test_extreme_jumps_round_trip(photo, model):
    x = photo.copy()
    x[::3, ::2] = 255
    x[1::4, 1::3] = 0
    assert_lsq_roundtrip(x, model)


def test_the_file_is_within_a_fraction_of_a_percent_of_its_ideal_bits(photo):
    values, mus, bins, chan_of = lsq.analyse(photo)
    idx = lsq.choose_scales(values, mus, bins, chan_of, 3)
    bits = lsq._bits_by_scale(values, mus, bins, chan_of, 3, lsq.SCALES)
    ideal = sum(bits[k, b, idx[k, b]] for k in range(3) for b in range(lsq.BINS))
    data = lsq.encode(photo)
    coded = 8 * (len(data) - idx.size)
    assert ideal <= coded <= ideal * 1.003 + 64


@pytest.mark.parametrize("model", MODELS)
def test_threads_do_not_change_the_bytes(photo, model):
    assert lsq.encode(photo, threads=1, model=model) == lsq.encode(photo, threads=2, model=model)


def test_truncated_or_corrupt_data_is_a_value_error_or_other_pixels(photo):
    data = lsq.encode(photo)
    with pytest.raises(ValueError, match="truncated"):
        lsq.decode(data[:40], *photo.shape)
    with pytest.raises(ValueError, match="truncated"):
        lsq.decode(data[:-1], *photo.shape)
    bad_table = bytes([200]) + data[1:]
    with pytest.raises(ValueError, match="scale table"):
        lsq.decode(bad_table, *photo.shape)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    back = lsq.decode(bytes(flipped), *photo.shape)  # decodes to something, never crashes
    assert back.shape == photo.shape and not np.array_equal(back, photo)


@pytest.mark.parametrize("model", [lsq.MODEL_MIXED, lsq.MODEL_POINTERS])
def test_truncated_or_corrupt_mixed_data_is_a_value_error_or_other_pixels(photo, model):
    data = lsq.encode(photo, model=model)
    with pytest.raises(ValueError, match="truncated"):
        lsq.decode(data[:3 * lsq.BINS + 2], *photo.shape, model=model)
    for cut in (data[:-2], data[:len(data) // 2]):  # the coder reads zeros past the end
        back = lsq.decode(cut, *photo.shape, model=model)
        assert back.shape == photo.shape and not np.array_equal(back, photo)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    back = lsq.decode(bytes(flipped), *photo.shape, model=model)
    assert back.shape == photo.shape and not np.array_equal(back, photo)


def test_classic_rows_take_the_own_code_where_it_is_smaller_and_decode_it(photo):
    # the example is a JPEG decode, which the own code takes in YCbCr (tests/test_ycc.py):
    # flipped low bits make it none
    photo = photo ^ np.random.default_rng(1).integers(0, 2, photo.shape, dtype=np.uint8)
    x = np.ascontiguousarray(photo.transpose(2, 0, 1))
    name, blob = classic.encode_rows(x, lsq_max_pixels=photo.shape[0] * photo.shape[1])
    assert name == "lsq-pointers" and blob[0] == classic.TAG_LSQ_POINTERS
    np.testing.assert_array_equal(classic.decode_rows(blob, 3, *photo.shape[:2]), x)
    assert classic.encode_rows(x)[0] != "lsq-pointers"  # only where asked (whole images)
    # the earlier models' codes (format 11-14 and 15 files) still decode behind their tags
    for tag, model in ((classic.TAG_LSQ, lsq.MODEL_LOGISTIC), (classic.TAG_LSQ_MIXED, lsq.MODEL_MIXED)):
        old = bytes([tag]) + lsq.encode(photo, model=model)
        np.testing.assert_array_equal(classic.decode_rows(old, 3, *photo.shape[:2]), x)
    with pytest.raises(ValueError):
        classic.decode_rows(blob[:30], 3, *photo.shape[:2])


def test_unsupported_channel_counts_are_refused():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        lsq.encode(np.zeros((4, 4, 2), dtype=np.uint8))
