"""Metadata beside the pixels (EXIF, XMP, text chunks, dpi, colour chunks): kept byte for
byte through compress and decompress, listed by `info`, and what a format cannot hold said
on stderr; through the CLI on the tiny test model (test_cli's fixtures)."""

from __future__ import annotations

import doctest
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import vdmcodec.metadata
from test_cli import assert_error, cli_models, invoke, json_lines, ok, _cli_env  # noqa: F401 (fixtures)
from vdmcodec.container import pack_container, unpack_container
from vdmcodec.metadata import ImageMetadata, pack_metadata, png_metadata, splice_png_chunks, unpack_metadata

ORIENTATION = 0x0112


def test_docstring_examples_run():
    assert doctest.testmod(vdmcodec.metadata, raise_on_error=True).attempted > 0


def _noise(w: int = 24, h: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "vdmcodec test camera"  # Make
    return exif


def phone_png(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Sea at dusk")
    info.add_itxt("Description", "ünïcode ✓", zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"tIME", struct.pack(">HBBBBB", 2026, 12, 4, 20, 0, 0))
    _noise().save(path, pnginfo=info, exif=_exif(), dpi=(300, 300))
    return path


def test_png_metadata_round_trips_byte_for_byte(tmp_path):
    src = phone_png(tmp_path / "phone.png")
    ok(invoke("compress", src, "--effort", "fast"))
    ok(invoke("decompress", tmp_path / "phone.vdmc", "-o", tmp_path / "back.png"))
    a, b = (png_metadata((tmp_path / n).read_bytes()) for n in ("phone.png", "back.png"))
    kinds = [name.split(":")[2] for name, _ in a.items]
    assert {"tEXt", "iTXt", "zTXt", "gAMA", "tIME", "pHYs", "eXIf"} - set(kinds) <= {"zTXt"}, kinds
    assert a == b and len(a.items) >= 6
    with Image.open(tmp_path / "back.png") as im:
        assert im.getexif()[ORIENTATION] == 6  # a viewer turns it the same way as the original
        assert im.text["Description"] == "ünïcode ✓"
    info = ok(invoke("info", tmp_path / "phone.vdmc")).stdout
    assert "png eXIf" in info and "png tEXt Title" in info and "png gAMA" in info
    listed = json_lines(ok(invoke("info", "--json", tmp_path / "phone.vdmc")))[0]["metadata"]
    assert listed == [a.describe()]


def test_jpeg_input_is_noted_and_its_exif_comment_and_dpi_are_kept(tmp_path):
    src = tmp_path / "photo.jpg"
    _noise().save(src, exif=_exif(8), comment=b"taken at noon", dpi=(200, 200), quality=90)
    r = ok(invoke("compress", src, "--effort", "fast", "--json"))
    rec = json_lines(r)[0]
    assert rec["source_format"] == "JPEG" and rec["source_bytes"] == src.stat().st_size
    assert "decoded pixels are coded exactly" in r.stderr and "JPEG" in r.stderr
    assert [m.split(" ")[0] for m in rec["metadata"]] == ["exif", "comment", "dpi"]
    ok(invoke("decompress", tmp_path / "photo.vdmc", "-o", tmp_path / "back.png"))
    with Image.open(tmp_path / "back.png") as im, Image.open(src) as orig:
        assert im.getexif()[ORIENTATION] == 8 and im.info["Comment"] == "taken at noon"
        assert im.getexif().tobytes() == orig.getexif().tobytes()
        assert im.info["dpi"] == pytest.approx((200, 200), abs=1e-3)
    r = ok(invoke("decompress", tmp_path / "photo.vdmc", "-o", tmp_path / "back.webp"))
    assert "cannot hold comment" in r.stderr and "dpi" in r.stderr and "exif" not in r.stderr.split("hold")[1]
    with Image.open(tmp_path / "back.webp") as im:
        assert im.getexif()[ORIENTATION] == 8


def test_tiff_tags_that_are_not_kept_are_named(tmp_path):
    src = tmp_path / "scan.tif"
    _noise().save(src, tiffinfo={270: "a scanned slide", 315: "someone"})
    r = ok(invoke("compress", src, "--effort", "fast", "--json"))
    assert json_lines(r)[0]["dropped_metadata"] == ["TIFF ImageDescription", "TIFF Artist"]
    assert "not kept: TIFF ImageDescription, TIFF Artist" in r.stderr


def test_a_damaged_metadata_section_is_a_corrupt_file(tmp_path):
    src = phone_png(tmp_path / "phone.png")
    ok(invoke("compress", src, "--effort", "fast"))
    header, sections = unpack_container((tmp_path / "phone.vdmc").read_bytes())
    header = {k: v for k, v in header.items() if k != "sections"}
    bad = sections["meta0"][:-3]  # CRC recomputed: only the content is wrong
    (tmp_path / "bad.vdmc").write_bytes(pack_container(header, [(k, bad if k == "meta0" else v) for k, v in sections.items()]))
    assert_error(invoke("decompress", tmp_path / "bad.vdmc", "-o", tmp_path / "x.png"), 8, "metadata")
    assert not (tmp_path / "x.png").exists()
    assert_error(invoke("info", tmp_path / "bad.vdmc"), 8, "metadata")


@pytest.mark.parametrize("blob", [b"", b"\x00\x01", b"\x00\x01\x00\x04exif\x00\x00\x00\x09abc",
                                  b"\x00\x00trailing", b"\x00\x01\x00\x09png:7:gAMA\x00\x00\x00\x00"])
def test_malformed_metadata_is_refused(blob):
    with pytest.raises(ValueError):
        unpack_metadata(blob)


def test_chunks_land_in_their_slots():
    """A palette image's bKGD must follow PLTE, text after IDAT stays after it."""
    buf = io.BytesIO()
    _noise().quantize(8).save(buf, "PNG")
    meta = ImageMetadata((("png:0:gAMA", b"\x00\x00\xb1\x8f"), ("png:1:bKGD", b"\x02"), ("png:2:tEXt", b"k\x00v")))
    out = splice_png_chunks(buf.getvalue(), meta.png_chunks())
    order, i = [], 8
    while i < len(out):
        n, t = struct.unpack_from(">I4s", out, i)
        assert struct.unpack_from(">I", out, i + 8 + n)[0] == zlib.crc32(t + out[i + 8 : i + 8 + n])
        order.append(t)
        i += 12 + n
    assert order.index(b"gAMA") < order.index(b"PLTE") < order.index(b"bKGD") < order.index(b"IDAT")
    assert order.index(b"tEXt") == len(order) - 2 and order[-1] == b"IEND"
    assert png_metadata(out) == meta and unpack_metadata(pack_metadata(meta)) == meta
    with Image.open(io.BytesIO(out)) as im:
        im.load()
