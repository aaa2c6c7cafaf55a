"""Files written by earlier code still decode with this code, pixel for pixel.

tests/data/s3_two_pass.vdmc is an archive (a 26x22 RGB crop and a 17x13 grey crop) written
by session 3's code (commit 1f4cbec) with tests/data/s3_tiny_two_pass.pt, a tiny model with
the two-pass pixel context and scrambled weights; s4_four_pass.vdmc the same crops written by
session 4's code with a four-pass model; s6_v2_context_ensemble.vdmc (format version 2) the
same crops with the four-pass model, each image's own pixel-context weights, the step plan
0, 1, 2, 4, 8 and a 2-call network ensemble on its first two steps, written by session 6's code;
s8_v4_metadata.vdmc (format 4) the same crops with metadata on the RGB one, image_defaults and
4-digit per-image hashes, written by session 8's code; s9_colour_shifts.vdmc the v2 settings
again with session 9's per-pass shifts of the colour coefficients; s10_v5_z0_ensemble.vdmc
(format 5) the v2 settings with a 4-call flip ensemble at z_0 and the RGB crop's read-out of
the network's features; s11_v6_exact.vdmc (format 6) the crops in exact arithmetic with the
shipped model vdmc-rgb-t64-s11, and s12_v7_columns.vdmc (format 7: image_columns) the same
with vdmc-rgb-t64-s12 (a 64-channel context network trained on 4 calls at z_0, which every
image gets), models that every later release must ship (s13 retrained the big network, so
checkpoints/vdmc-rgb-t64-s12.pt carries them and the decoder finds them by hash).  Any change to the container, the coding chain or
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
                                                       ("s6_v2_context_ensemble.vdmc", "s4_tiny_four_pass.pt", 4),
                                                       ("s8_v4_metadata.vdmc", "s4_tiny_four_pass.pt", 4),
                                                       ("s9_colour_shifts.vdmc", "s4_tiny_four_pass.pt", 4),
                                                       ("s10_v5_z0_ensemble.vdmc", "s4_tiny_four_pass.pt", 4)])
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


def test_version_4_golden_file_keeps_its_metadata():
    from data.make_golden import V4_METADATA

    data = (DATA / "s8_v4_metadata.vdmc").read_bytes()
    assert int.from_bytes(data[8:10], "little") == 4
    images = dict(decompress_bytes(data, checkpoint=str(DATA / "s4_tiny_four_pass.pt")))
    assert images["s3_rgb.png"].metadata.items == V4_METADATA and not images["s3_grey.png"].metadata
    header, _ = unpack_container(data)
    assert all(len(e["pixel_sha256_short"]) == 4 and e["method"] == "bitsback" for e in header["images"])


def test_session_9_golden_file_sends_colour_shifts():
    from vdmcodec.coding import adapt

    header, sections = unpack_container((DATA / "s9_colour_shifts.vdmc").read_bytes())
    lm = load_checkpoint(DATA / "s4_tiny_four_pass.pt")
    from vdmcodec.coding.steps import StepModel

    sm = StepModel(lm.model, lm.gamma_table.numpy())
    rgb = next(e for e in header["images"] if e["name"] == "s3_rgb.png")
    weights = adapt.unpack_deltas(sm, sections[rgb["pixel_context"]], 3)
    assert weights.coef_shift is not None and np.abs(weights.coef_shift).max() > 0


def test_version_5_golden_file_needs_its_z0_ensemble():
    """The calls at z_0 are part of the file: read as one call, the same payload does not
    give the image back (a clear error, never a wrong image)."""
    from vdmcodec.container import pack_container
    from vdmcodec.errors import VdmcError

    data = (DATA / "s10_v5_z0_ensemble.vdmc").read_bytes()
    assert int.from_bytes(data[8:10], "little") == 5
    header, sections = unpack_container(data)
    assert header["compute"]["z0_ensemble"] == 4 and all(e.get("pixel_context") for e in header["images"])
    from vdmcodec.coding import adapt
    from vdmcodec.coding.steps import StepModel

    lm = load_checkpoint(DATA / "s4_tiny_four_pass.pt")
    rgb = next(e for e in header["images"] if e["name"] == "s3_rgb.png")
    weights = adapt.unpack_deltas(StepModel(lm.model, lm.gamma_table.numpy()), sections[rgb["pixel_context"]], 3)
    assert weights.feature_head is not None and np.abs(weights.feature_head).max() > 0
    header["compute"]["z0_ensemble"] = 1
    edited = pack_container(header, [(s["name"], sections[s["name"]]) for s in header["sections"]])
    with pytest.raises(VdmcError):
        decompress_bytes(edited, checkpoint=str(DATA / "s4_tiny_four_pass.pt"))


def _assert_golden_crops(images: dict) -> None:
    assert set(images) == {"s3_rgb.png", "s3_grey.png"}
    for name, img in images.items():
        with Image.open(DATA / name) as im:
            want = np.asarray(im)
        np.testing.assert_array_equal(img.planes if img.mode != "L" else img.planes[:, :, 0], want)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_version_6_exact_golden_file_decodes_with_any_thread_count(threads, monkeypatch):
    """Written with 2 threads in exact arithmetic by session 11's code and the shipped model
    (or a later checkpoint carrying it); the decoder uses its own thread count."""
    data = (DATA / "s11_v6_exact.vdmc").read_bytes()
    header, _ = unpack_container(data)
    assert header["compute"]["arith"] == "exact1" and header["compute"]["threads"] == 2
    assert header["model"]["id"] == "vdmc-rgb-t64-s11"
    monkeypatch.setenv("VDMCODEC_THREADS", threads)
    _assert_golden_crops(dict(decompress_bytes(data)))  # its model found by hash among the shipped ones


def test_version_6_golden_file_needs_its_arithmetic():
    """Read as a float-arithmetic file, the same payload does not give the images back."""
    from vdmcodec.container import pack_container
    from vdmcodec.errors import VdmcError

    header, sections = unpack_container((DATA / "s11_v6_exact.vdmc").read_bytes())
    header["compute"]["arith"] = "float"
    edited = pack_container(header, [(s["name"], sections[s["name"]]) for s in header["sections"]])
    with pytest.raises(VdmcError):
        decompress_bytes(edited)


FUZZ_CASES = 36  # seeded: the same damaged files every run, a few seconds in all


@pytest.mark.parametrize("golden", ["s4_four_pass.vdmc", "s8_v4_metadata.vdmc"])
def test_damaged_golden_files_give_a_documented_exit_and_no_image(golden, tmp_path):
    """Random truncations, bit flips and inserted bytes: each decompress ends with one of the
    documented exit codes for a bad file (8 corrupt, 9 version, 11 model, 12 verification,
    13 compute setup), one error line, no traceback, and no image written."""
    from click.testing import CliRunner

    from vdmcodec.cli import main

    data = (DATA / golden).read_bytes()
    rng = np.random.default_rng(8)
    codes = set()
    for case in range(FUZZ_CASES):
        kind = ("truncate", "flip", "insert")[case % 3]
        d = bytearray(data)
        if kind == "truncate":
            d = d[: int(rng.integers(0, len(d)))]
        elif kind == "flip":
            for pos in rng.integers(0, len(d), int(rng.integers(1, 4))):
                d[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            pos = int(rng.integers(0, len(d) + 1))
            d[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        src, out = tmp_path / f"case{case}.vdmc", tmp_path / f"out{case}"
        src.write_bytes(bytes(d))
        r = CliRunner().invoke(main, ["decompress", str(src), "-o", str(out),
                                      "--checkpoint", str(DATA / "s4_tiny_four_pass.pt")])
        assert r.exit_code in (8, 9, 11, 12, 13), (case, kind, r.exit_code, r.output)
        assert "Traceback" not in r.output and r.output.strip().startswith("vdmcodec: error:"), (case, r.output)
        assert not out.exists() or not any(out.iterdir()), (case, kind)
        codes.add(r.exit_code)
    assert 8 in codes


def test_version_7_golden_file_with_image_columns_decodes():
    """Written by session 12's code with vdmc-rgb-t64-s12 (exact arithmetic, fast effort):
    the archive's names, hashes and other per-image fields are image_columns in the header."""
    import json
    import struct
    import zlib

    data = (DATA / "s12_v7_columns.vdmc").read_bytes()
    version, length = struct.unpack_from("<HI", data, 8)
    raw = json.loads(zlib.decompress(data[14 : 14 + length], -15))
    assert version == 7 and {"name", "pixel_sha256_short"} <= set(raw["image_columns"])
    header, _ = unpack_container(data)
    assert header["model"]["id"] == "vdmc-rgb-t64-s12" and [e["name"] for e in header["images"]] == ["s3_rgb.png", "s3_grey.png"]
    _assert_golden_crops(dict(decompress_bytes(data)))


def test_version_8_golden_file_with_rice_coded_context_sections_decodes():
    """Written by session 13's code with the tiny four-pass model (make_golden.py v5): each
    image's own context section in Golomb-Rice codes (coder.context_packing = rice)."""
    import struct

    from vdmcodec.coding import adapt
    from vdmcodec.coding.steps import StepModel

    data = (DATA / "s13_v8_rice.vdmc").read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 8
    header, sections = unpack_container(data)
    assert header["coder"]["context_packing"] == "rice"
    lm = load_checkpoint(DATA / "s4_tiny_four_pass.pt")
    sm = StepModel(lm.model, lm.gamma_table.numpy())
    rgb = next(e for e in header["images"] if e["name"] == "s3_rgb.png")
    weights = adapt.unpack_deltas(sm, sections[rgb["pixel_context"]], 3, "rice")
    assert weights.feature_head is not None and len(sections[rgb["pixel_context"]]) < 744  # the int8 size
    _assert_golden_crops(dict(decompress_bytes(data, checkpoint=str(DATA / "s4_tiny_four_pass.pt"))))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_version_9_golden_file_with_film_deltas_decodes(threads, monkeypatch):
    """Written by session 14's code with vdmc-rgb-t64-s13 in exact arithmetic (make_golden.py
    v9): each image carries its own FiLM deltas of the network, which the decoder folds into
    the exact tables; any thread count gives the same bits."""
    import struct

    from vdmcodec.coding.film import unpack_film

    monkeypatch.setenv("VDMCODEC_THREADS", threads)
    data = (DATA / "s14_v9_film.vdmc").read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 9
    header, sections = unpack_container(data)
    assert header["model"]["id"] == "vdmc-rgb-t64-s13" and header["compute"]["arith"] == "exact1"
    films = [sections[e["film"]] for e in header["images"]]
    assert len(films) == 2 and all(any(s.any() for s in unpack_film(f, [128, 256, 256, 256, 128]).steps) for f in films)
    _assert_golden_crops(dict(decompress_bytes(data)))


def test_version_10_golden_file_with_the_header_dictionary_decodes():
    """Written by session 15's code (make_golden.py v10: s14_v9_film.vdmc's recipe with 8
    calls at z_0, the flips of z_0 and of its transpose): the header is deflated from the
    preset dictionary of format 10, and inflates only with it; the seed is JPEG XL."""
    import struct
    import zlib

    data = (DATA / "s15_v10_zdict.vdmc").read_bytes()
    version, length = struct.unpack_from("<HI", data, 8)
    assert version == 10
    with pytest.raises(zlib.error):
        zlib.decompress(data[14 : 14 + length], -15)
    header, _ = unpack_container(data)
    assert header["model"]["id"] == "vdmc-rgb-t64-s13" and all("film" in e for e in header["images"])
    assert header["compute"]["z0_ensemble"] == 8
    assert [r["codec"] for e in header["images"] for r in e["layout"] if r["kind"] == "classic"] == ["jxl"]
    assert length < struct.unpack_from("<I", (DATA / "s14_v9_film.vdmc").read_bytes(), 10)[0] - 300
    _assert_golden_crops(dict(decompress_bytes(data)))


def test_golden_file_with_a_classic_strip_between_bitsback_regions_decodes():
    """Written by session 17's code (make_golden.py strips): the RGB crop alone, in exact
    arithmetic, with a classic strip in the middle of its rows (coding.bands) between
    bits-back regions, still format 10: the decoder has always read a classic region
    anywhere in the layout, and must keep doing so."""
    import struct

    data = (DATA / "s17_v10_strip.vdmc").read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 10
    header, _ = unpack_container(data)
    layout = header["images"][0]["layout"]
    kinds = [r["kind"] for r in layout]
    middle = [i for i, r in enumerate(layout) if r["kind"] == "classic" and r["rows"][0] > 0]
    assert middle and "bitsback" in kinds[: middle[0]] and "bitsback" in kinds[middle[0] + 1 :]
    ((name, img),) = decompress_bytes(data)
    with Image.open(DATA / name) as im:
        np.testing.assert_array_equal(img.planes, np.asarray(im))


def assert_lsq_golden_file(file: str, version: int, tag: int, png: str, mode: str) -> None:
    """A single-image golden file of `version` stored whole in the classic code `tag`
    decodes to the PNG beside it, in PIL mode `mode`."""
    import struct

    data = (DATA / file).read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == version
    header, sections = unpack_container(data)
    (entry,) = header["images"]
    assert entry["method"] == "classic-planes" and sections[entry["planes_section"]][0] == tag
    ((name, img),) = decompress_bytes(data)
    assert name == png and img.mode == mode
    with Image.open(DATA / name) as im:
        want = np.asarray(im)
    np.testing.assert_array_equal(img.planes if mode == "RGB" else img.planes[:, :, 0], want)


@pytest.mark.parametrize("kind,mode", [("rgb", "RGB"), ("grey", "L")])
def test_version_11_golden_files_in_the_own_least_squares_code_decode(kind, mode):
    """Written by session 22's code (make_golden.py lsq): a 48x64 photograph crop stored
    whole in the own least-squares code (classic tag 4, coding.lsq), RGB and grey.  Its
    prediction, error bins and probabilities are part of the format: any change to them
    strands these files and fails here."""
    assert_lsq_golden_file(f"s22_v11_lsq_{kind}.vdmc", 11, 4, f"s22_{kind}.png", mode)


@pytest.mark.parametrize("kind,mode", [("rgb", "RGB"), ("grey", "L")])
def test_version_15_golden_files_in_the_mixed_least_squares_model_decode(kind, mode):
    """Written by session 26's code (make_golden.py lsq2): a 48x64 crop of a never-JPEG film
    scan stored whole in the least-squares code's mixed model (classic tag 6, coding.lsqcm),
    RGB and grey.  The binarisation, contexts, mixers, maps and coder are part of the
    format: any change to them strands these files and fails here."""
    assert_lsq_golden_file(f"s26_v15_lsq_mixed_{kind}.vdmc", 15, 6, f"s26_{kind}.png", mode)


@pytest.mark.parametrize("kind,mode", [("rgb", "RGB"), ("grey", "L")])
def test_version_16_golden_files_in_the_mixed_model_with_pointer_contexts_decode(kind, mode):
    """Written by session 27's code (make_golden.py lsq3): a 48x64 crop of a box-downsampled
    JPEG photograph stored whole in the mixed model with its pointer contexts (classic tag 7),
    RGB and grey.  The pointers, their joint context and the seventh mixer are part of the
    format: any change to them strands these files and fails here."""
    assert_lsq_golden_file(f"s27_v16_lsq_pointers_{kind}.vdmc", 16, 7, f"s27_{kind}.png", mode)


def assert_ycc_golden_file(file: str, version: int, png: str, mode: int) -> None:
    """A single-image golden file in the YCbCr code (classic tag 5) of `version`, whose mode
    byte is `mode`, decodes to the PNG beside it."""
    import struct

    data = (DATA / file).read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == version
    header, sections = unpack_container(data)
    (entry,) = header["images"]
    assert entry["method"] == "classic-planes" and sections[entry["planes_section"]][:2] == bytes([5, mode])
    ((name, img),) = decompress_bytes(data)
    assert name == png and img.mode == "RGB"
    with Image.open(DATA / name) as im:
        np.testing.assert_array_equal(img.planes, np.asarray(im))


def test_version_15_golden_file_with_jpeg_ycbcr_planes_in_the_mixed_model_decodes():
    """Written by session 26's code (make_golden.py ycc2): the JPEG-decoded crop (chroma
    whole) in the own code of its libjpeg YCbCr planes, that code in the mixed model (ycc
    mode bit 32)."""
    assert_ycc_golden_file("s26_v15_ycc_mixed.vdmc", 15, "s22_rgb.png", 32)


def test_version_16_golden_file_with_jpeg_ycbcr_planes_in_the_pointer_model_decodes():
    """Written by session 27's code (make_golden.py ycc2): the same crop, that code in the
    mixed model with its pointer contexts (ycc mode bit 64)."""
    assert_ycc_golden_file("s27_v16_ycc_pointers.vdmc", 16, "s22_rgb.png", 64)


@pytest.mark.parametrize("kind,png,mode", [("rgb", "s22_rgb.png", 0), ("half", "s23_jpeg420.png", 1)])
def test_version_12_golden_files_in_the_own_code_of_jpeg_ycbcr_planes_decode(kind, png, mode):
    """Written by session 23's code (make_golden.py ycc): two JPEG decodes stored whole in
    the own code of their libjpeg YCbCr planes (classic tag 5, coding.ycc): the crop above
    (31 escapes) with its chroma whole, and the 128x96 example through Pillow's JPEG at
    4:2:0 with its chroma at half resolution.  libjpeg's tables and upsampling, the plane order
    and the escape section are part of the format."""
    assert_ycc_golden_file(f"s23_v12_ycc_{kind}.vdmc", 12, png, mode)


@pytest.mark.parametrize("kind,png,mode", [("half", "s24_jpeg420_q75.png", 13), ("whole", "s24_jpeg444_q75.png", 12)])
def test_version_13_golden_files_with_luma_and_chroma_as_jpeg_coefficients_decode(kind, png, mode):
    """Written by session 24's code (make_golden.py coef): the 128x96 example through Pillow's
    JPEG at quality 75, 4:2:0 and 4:4:4, stored in the own code of its YCbCr planes with Y,
    Cb and Cr as the JPEG's DCT coefficients (coding.jpegcoef).  libjpeg's integer IDCT, the
    coefficient walk, its adaptive models and the residual are part of the format."""
    assert_ycc_golden_file(f"s24_v13_coef_{kind}.vdmc", 13, png, mode)


@pytest.mark.parametrize("kind,png,mode", [("half", "s25_jpeg420_q95_edited.png", 29), ("rows", "s25_jpeg422_q90.png", 30)])
def test_version_14_golden_files_with_coefficients_in_model_2_decode(kind, png, mode):
    """Written by session 25's code (make_golden.py coef2): the 128x96 example through Pillow's
    JPEG at quality 95, 4:2:0, with three pixels edited (escapes, their fixes relative to G),
    and at quality 90, 4:2:2; Y, Cb and Cr as JPEG coefficients in jpegcoef's model 2 (edge and
    DC predictions across block borders), the chroma exact with its IJG table."""
    assert_ycc_golden_file(f"s25_v14_coef_{kind}.vdmc", 14, png, mode)
