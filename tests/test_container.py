"""The .vdmc container: round trip and every way a file can be damaged."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest

from vdmcodec.container import FORMAT_VERSION, MAGIC, pack_container, read_header, share_image_fields, unpack_container
from vdmcodec.errors import CorruptFileError, InputNotFoundError, UnsupportedVersionError
from vdmcodec.header_zdict import HEADER_ZDICT_V10

HEADER = {"model": {"id": "vdm-test", "sha256": "ab" * 32}, "coder": {"precision": 24}, "note": "größe ✓"}
SECTIONS = [("image0", b"\x00\x01\x02" * 7), ("alpha0", b"\xff" * 5), ("empty", b""), ("tail", b"xyz")]
HEADER_START = len(MAGIC) + 6


@pytest.fixture
def packed() -> bytes:
    return pack_container(HEADER, SECTIONS)


def header_length(data: bytes) -> int:
    return struct.unpack_from("<I", data, len(MAGIC) + 2)[0]


def sections_start(data: bytes) -> int:
    return HEADER_START + header_length(data) + 4


def expect_error(data: bytes, cls: type[Exception], words: tuple[str, ...] = ()) -> str:
    """The exact class, never anything else (a bare struct/json error would be a bug)."""
    with pytest.raises(Exception) as info:
        unpack_container(data, source="f.vdmc")
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "f.vdmc" in message
    for word in words:
        assert word in message
    return message


def deflate(raw: bytes, version: int = FORMAT_VERSION) -> bytes:
    """The header as FORMAT.md says a file of this version deflates it (from version 10
    with the preset dictionary)."""
    zdict = {"zdict": HEADER_ZDICT_V10} if version >= 10 else {}
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **zdict)
    return comp.compress(raw) + comp.flush()


def inflate(blob: bytes) -> bytes:
    dec = zlib.decompressobj(-15, zdict=HEADER_ZDICT_V10)
    return dec.decompress(blob) + dec.flush()


def rebuild(header_text: bytes, tail: bytes = b"", version: int = FORMAT_VERSION, *, raw: bool = False) -> bytes:
    """A container with an arbitrary header text but a valid header CRC: what a buggy or
    hostile writer could produce.  The text is deflated as the format says unless raw."""
    header_bytes = header_text if raw else deflate(header_text, version)
    body = struct.pack("<HI", version, len(header_bytes)) + header_bytes
    return MAGIC + body + struct.pack("<I", zlib.crc32(body)) + tail


# ----------------------------------------------------------------------------- round trip


def test_round_trip(packed):
    header, sections = unpack_container(packed)
    assert sections == dict(SECTIONS)
    assert list(sections) == [name for name, _ in SECTIONS]
    assert {k: v for k, v in header.items() if k != "sections"} == HEADER
    assert header["sections"] == [
        {"name": n, "bytes": len(d), "crc32": zlib.crc32(d)} for n, d in SECTIONS
    ]


def test_layout_matches_spec(packed):
    assert packed.startswith(b"\x89VDMC\r\n\x1a")
    assert struct.unpack_from("<H", packed, 8)[0] == FORMAT_VERSION == 16
    n = header_length(packed)
    text = inflate(packed[14 : 14 + n])
    header = json.loads(text)
    assert text == json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert struct.unpack_from("<I", packed, 14 + n)[0] == zlib.crc32(packed[8 : 14 + n])
    assert packed[18 + n :] == b"".join(d for _, d in SECTIONS)


def test_pack_does_not_modify_callers_header_and_overrides_sections():
    header = dict(HEADER, sections="stale")
    data = pack_container(header, [("a", b"1")])
    assert header["sections"] == "stale"
    assert unpack_container(data)[0]["sections"] == [{"name": "a", "bytes": 1, "crc32": zlib.crc32(b"1")}]


def test_no_sections_and_deterministic_output():
    assert unpack_container(pack_container({}, [])) == ({"sections": []}, {})
    assert pack_container({"b": 1, "a": 2}, SECTIONS) == pack_container({"a": 2, "b": 1}, SECTIONS)


def test_duplicate_section_names_rejected_when_packing():
    with pytest.raises(ValueError):
        pack_container({}, [("a", b""), ("a", b"x")])


# ----------------------------------------------------------------------------- damage


def test_every_truncation_is_reported(packed):
    expect_error(b"", CorruptFileError, ("empty",))
    for end in range(1, len(packed)):
        expect_error(packed[:end], CorruptFileError, ("truncated",))


def test_every_single_bit_flip_in_header_is_detected(packed):
    end = sections_start(packed)
    for pos in range(len(MAGIC), end):
        damaged = bytearray(packed)
        damaged[pos] ^= 0x10
        with pytest.raises((CorruptFileError, UnsupportedVersionError)):
            unpack_container(bytes(damaged))


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_flipped_header_json_byte_is_corrupt(packed, offset):
    damaged = bytearray(packed)
    damaged[HEADER_START + offset] ^= 0x01
    expect_error(bytes(damaged), CorruptFileError, ("corrupt", "header"))


def test_flipped_header_crc_is_corrupt(packed):
    damaged = bytearray(packed)
    damaged[sections_start(packed) - 1] ^= 0x80
    expect_error(bytes(damaged), CorruptFileError, ("corrupt",))


def test_flipped_section_byte_is_corrupt_and_names_section(packed):
    start = sections_start(packed)
    for pos in range(start, len(packed)):
        damaged = bytearray(packed)
        damaged[pos] ^= 0xFF
        message = expect_error(bytes(damaged), CorruptFileError, ("corrupt",))
        assert "section" in message


def test_huge_header_length_is_truncation_not_memory_error(packed):
    damaged = bytearray(packed)
    struct.pack_into("<I", damaged, len(MAGIC) + 2, 0xFFFFFFFF)
    expect_error(bytes(damaged), CorruptFileError, ("truncated",))


NOT_VDMC = [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"hello world, not a codec file", b"\x00" * 3]


@pytest.mark.parametrize("bad", NOT_VDMC)
def test_wrong_magic(bad):
    expect_error(bad, CorruptFileError, ("not a .vdmc file",))


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 65535])
def test_other_version_is_unsupported_even_if_crc_is_wrong(packed, version):
    damaged = bytearray(packed)
    struct.pack_into("<H", damaged, len(MAGIC), version)  # the header CRC no longer matches
    message = expect_error(bytes(damaged), UnsupportedVersionError, (str(version),))
    assert "newer" in message or version == 0


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 9, 10])
def test_earlier_version_files_still_read(packed, version):
    """Versions 2 to 9 only added optional header fields and section contents, version 10
    the header's preset dictionary and version 11 a classic code (tag 4), so earlier files
    (before 10 their header deflated without the dictionary) read as before."""
    assert struct.unpack_from("<H", packed, len(MAGIC))[0] == FORMAT_VERSION
    start = len(MAGIC) + 6
    text = inflate(packed[start : start + header_length(packed)])
    old = rebuild(text, packed[start + header_length(packed) + 4 :], version)
    assert unpack_container(old) == unpack_container(packed)


def test_header_dictionary_is_frozen():
    """Files of version 10 inflate only with exactly these bytes: changing them needs a new
    format version (and keeping these for reading)."""
    assert hashlib.sha256(HEADER_ZDICT_V10).hexdigest() == "5c04b91cd857400c156bae2cd94fa1175b54686ac0acbb6c7c9fb71179bb5f8d"


def test_header_deflated_with_dictionary_is_corrupt_as_an_older_version(packed):
    """A version-10 header read as version 9 (without the dictionary) does not inflate: the
    version field decides, and the damage is reported, not misread."""
    old = bytearray(packed)
    struct.pack_into("<H", old, len(MAGIC), 9)
    end = len(MAGIC) + 6 + header_length(packed)
    struct.pack_into("<I", old, end, zlib.crc32(bytes(old[len(MAGIC):end])))
    expect_error(bytes(old), CorruptFileError, ("inflate",))


def test_header_dictionary_shrinks_a_photographs_header():
    """A single photograph's header (the fields the codec writes for a 768x512 image at the
    default effort, with another pixel hash, layout and sizes than the dictionary's): the
    dictionary takes most of what raw DEFLATE spends."""
    header = {"ans_words": 98210, "archive": False, "coder": {
        "T": 27, "ans": "constriction 0.5.0", "context_packing": "rice", "context_rows": 4, "max_region_pixels": 524288,
        "name": "vdm-bitsback-v1", "param_snap": 2.0 ** -16, "precision_bits": 24,
        "plan": list(range(17)) + [18, 20, 22, 24, 28, 32, 36, 40, 48, 56, 64]},
        "compute": {"arith": "exact1", "cpu_capability": "AVX2", "device": "cpu", "ensemble": 2, "ensemble_steps": 16,
                    "numpy": "2.4.6", "threads": 2, "torch": "2.13.0+cpu", "z0_ensemble": 4},
        "generator": "vdmcodec 0.1.0", "model": {"id": "vdmc-rgb-t64-s13", "sha256": hashlib.sha256(b"m").hexdigest()},
        "images": [{"bit_depth": 8, "height": 512, "width": 768, "method": "bitsback", "mode": "RGB", "name": "kodim23",
                    "pixel_context": "context0", "film": "film0", "planes": 3,
                    "pixel_sha256": hashlib.sha256(b"pixels").hexdigest(),
                    "layout": [{"bytes": 13119, "codec": "webp", "kind": "classic", "rows": [0, 18]}]
                    + [{"kind": "bitsback", "rows": [a, b]} for a, b in zip(range(18, 500, 30), range(48, 530, 30))]}]}
    sections = [("ans", b"a" * 300), ("film0", b"f" * 20), ("context0", b"c" * 50)]
    packed = pack_container(header, sections)
    text = inflate(packed[14 : 14 + header_length(packed)])
    assert header_length(packed) < 0.45 * len(deflate(text, 9))
    assert unpack_container(packed)[0]["images"] == header["images"]


def test_version_checked_on_short_newer_file():
    expect_error(MAGIC + struct.pack("<H", FORMAT_VERSION + 1), UnsupportedVersionError)


@pytest.mark.parametrize("garbage", [b"\x00", b"trailing garbage" * 10])
def test_trailing_bytes_are_corrupt(packed, garbage):
    expect_error(packed + garbage, CorruptFileError, ("corrupt", "after the last section"))


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        b'"just a string"',
        b"{}",
        b'{"sections": 5}',
        b'{"sections": [{"name": "a", "bytes": -1, "crc32": 0}]}',
        b'{"sections": [{"name": "a", "bytes": true, "crc32": 0}]}',
        b'{"sections": [{"name": "a", "bytes": 0, "crc32": 4294967296}]}',
        b'{"sections": [{"name": 7, "bytes": 0, "crc32": 0}]}',
        b'{"sections": [{"name": "a", "bytes": 1.5, "crc32": 0}]}',
        b'{"sections": [{"name": "a", "bytes": 0, "crc32": 0}, {"name": "a", "bytes": 0, "crc32": 0}]}',
        b'{"sections": ["a"]}',
        b"[" * 100000 + b"]" * 100000,
    ],
)
def test_bad_header_with_valid_crc_is_corrupt(text):
    expect_error(rebuild(text), CorruptFileError, ("corrupt",))


def test_header_that_does_not_inflate_is_corrupt():
    expect_error(rebuild(b'{"sections":[]}', raw=True), CorruptFileError, ("inflate",))
    good = deflate(b'{"sections":[]}')
    expect_error(rebuild(good + b"xx", raw=True), CorruptFileError, ("inflate",))


def test_sections_longer_than_file_is_truncated():
    text = b'{"sections":[{"bytes":10,"crc32":0,"name":"a"}]}'
    expect_error(rebuild(text, b"12345"), CorruptFileError, ("truncated",))


# ----------------------------------------------------------------------------- read_header


def test_read_header_from_file(tmp_path, packed):
    path = tmp_path / "x.vdmc"
    path.write_bytes(packed)
    header, size = read_header(path)
    assert size == len(packed)
    assert header == unpack_container(packed)[0]


def test_read_header_errors(tmp_path, packed):
    with pytest.raises(InputNotFoundError):
        read_header(tmp_path / "missing.vdmc")
    path = tmp_path / "x.vdmc"
    path.write_bytes(packed[:-1])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_header(path)
    path.write_bytes(packed + b"!")
    with pytest.raises(CorruptFileError, match="after the last section"):
        read_header(path)
    path.write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(CorruptFileError, match="not a .vdmc"):
        read_header(path)
    damaged = bytearray(packed)
    struct.pack_into("<H", damaged, len(MAGIC), FORMAT_VERSION + 1)
    path.write_bytes(bytes(damaged))
    with pytest.raises(UnsupportedVersionError):
        read_header(path)


# ----------------------------------------------------------------------------- shared image fields


def thumbnails(n: int) -> dict:
    return dict(HEADER, images=[{"name": f"im{i}", "width": 32, "height": 32, "mode": "RGB", "method": "bitsback",
                                 "layout": [{"rows": [0, 32], "kind": "bitsback"}], "alpha": f"alpha{i}",
                                 "pixel_sha256_short": f"{i:04x}"} for i in range(n)])


def test_fields_all_images_share_are_written_once_and_read_back_whole():
    header = thumbnails(50)
    header["images"][7]["width"] = 31  # one image differs: width stays per image
    header["images"][3]["icc"] = "icc3"  # only one image has it: stays in its entry
    shared = share_image_fields(header)
    assert set(shared["image_defaults"]) == {"height", "mode", "method", "layout"}
    # fields every image has but not alike go column by column; equal-length strings joined
    assert set(shared["image_columns"]) == {"name", "width", "alpha", "pixel_sha256_short"}
    assert shared["image_columns"]["pixel_sha256_short"] == "".join(f"{i:04x}" for i in range(50))
    assert isinstance(shared["image_columns"]["name"], list)  # im0 .. im49: lengths differ
    assert shared["images"][3] == {"icc": "icc3"} and len(shared["images"]) == 50
    packed = pack_container(shared, SECTIONS)
    assert len(packed) < len(pack_container(header, SECTIONS))
    back, _ = unpack_container(packed)
    assert "image_defaults" not in back and "image_columns" not in back and back["images"] == header["images"]
    assert share_image_fields(thumbnails(1)) == thumbnails(1)  # one image: nothing to share


@pytest.mark.parametrize("columns,images", [({"name": ["a"]}, [{}, {}]), ({"name": "abc"}, [{}, {}]),
                                            ({"name": 3}, [{}]), ([1], [{}]), ({"name": ["a", "b"]}, 2)])
def test_malformed_image_columns_are_a_corrupt_file(columns, images):
    text = json.dumps({"image_columns": columns, "images": images, "sections": []}).encode()
    expect_error(rebuild(text), CorruptFileError, ("image_columns",))


@pytest.mark.parametrize("defaults,images", [([1], [{"name": "a"}]), ({"mode": "RGB"}, {"name": "a"}),
                                             ({"mode": "RGB"}, [{"name": "a"}, 3])])
def test_malformed_image_defaults_are_a_corrupt_file(defaults, images):
    text = json.dumps({"image_defaults": defaults, "images": images, "sections": []}).encode()
    expect_error(rebuild(text), CorruptFileError, ("image_defaults",))
