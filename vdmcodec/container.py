"""The .vdmc container: magic, version, a CRC-protected JSON header, then raw sections.

Layout (all integers little-endian; see docs/FORMAT.md):

    0       8 bytes   MAGIC
    8       u16       format version
    10      u32       header length H
    14      H bytes   header: raw DEFLATE (zlib, wbits=-15) of a UTF-8 JSON object, from
                      version 10 with the preset dictionary header_zdict.HEADER_ZDICT_V10
    14+H    u32       CRC-32 of bytes 8 .. 14+H
    18+H    sections, in the order of header["sections"], nothing after them

Everything that can go wrong with a file on disk is reported as a CorruptFileError or
UnsupportedVersionError naming the file; raw struct/json/Unicode errors never escape.
No torch here, so `vdmcodec info` stays fast.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from typing import BinaryIO

from vdmcodec.errors import CorruptFileError, UnsupportedVersionError
from vdmcodec.files import open_input
from vdmcodec.header_zdict import HEADER_ZDICT_V10

MAGIC = b"\x89VDMC\r\n\x1a"  # PNG-style: high bit, CR LF and ^Z catch text-mode mangling
# written; 2 added coder.plan, compute.ensemble(_steps), images[].pixel_context; 3 added the
# context network's last layers in a pixel-context section and one section shared by several
# images; 4 added image_defaults (fields every image of an archive shares, written once) and
# shorter per-image hashes in archives; 5 added compute.z0_ensemble (docs/FORMAT.md), which
# a reader of 4 would ignore and decode wrongly; 6 added compute.arith ("exact1": the model's
# exact-arithmetic tables, any thread count; absent: "float"); 7 added image_columns (the
# per-image fields of an archive written column by column), which a reader of 6 would miss;
# 8 added coder.context_packing (Golomb-Rice context sections); 9 added images[].film (the
# section of an image's own FiLM deltas of the network), which a reader of 8 would ignore;
# 10 deflates the header from a preset dictionary (header_zdict: 710 -> 210 bytes on a Kodak file),
# and adds JPEG XL classic strips (tag 3) and z0_ensemble 8, which a reader of 9 would not know;
# 11 adds the own least-squares classic code (tag 4, coding.lsq), which a reader of 10 would not know;
# 12 adds that code of a JPEG decode's YCbCr planes (tag 5, coding.ycc), unknown to a reader of 11;
# 13 and 14 add ycc's coefficient modes; 15 adds the least-squares code's mixed model (tag 6,
# coding.lsqcm), unknown to a reader of 14; 16 its pointer contexts (tag 7, ycc bit 64)
FORMAT_VERSION = 16
READ_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)  # earlier files mean the same in the later versions
# per-image fields that name that image's own sections or content: never shared
_OWN_FIELDS = {"name", "pixel_sha256", "pixel_sha256_short", "alpha", "classic", "icc", "meta", "planes_section", "film"}

_FIXED = struct.Struct("<HI")  # version, header length; follows the magic
_PREFIX_SIZE = len(MAGIC) + _FIXED.size
_CRC = struct.Struct("<I")


def share_image_fields(header: dict) -> dict:
    """The header with an archive's image fields written once each: those all images have
    alike in image_defaults (an archive of 200 thumbnails repeats its size, mode and layout
    200 times), the others that every image has in image_columns, one column per field.  A
    column of strings of one length (the short hashes) is written as their concatenation:
    on CIFAR's 200 images the columns save 350 of 2,430 deflated bytes.  unpack_container
    puts every image back whole."""
    images = header.get("images") or []
    if len(images) < 2:
        return header
    keys = set.intersection(*(set(e) for e in images))
    shared = {k: images[0][k] for k in sorted(keys - _OWN_FIELDS) if all(e[k] == images[0][k] for e in images[1:])}
    columns = {k: _pack_column([e[k] for e in images]) for k in sorted(keys - set(shared))}
    rest = [{k: v for k, v in e.items() if k not in shared and k not in columns} for e in images]
    out = dict(header, images=rest)  # entries left empty still give the count ({},{},... deflates to nothing)
    if shared:
        out["image_defaults"] = shared
    if columns:
        out["image_columns"] = columns
    return out


def _pack_column(values: list) -> list | str:
    if all(isinstance(v, str) for v in values) and len({len(v) for v in values}) == 1 and values[0]:
        return "".join(values)
    return values


def pack_container(header: dict, sections: list[tuple[str, bytes]]) -> bytes:
    """Serialise header and sections. header["sections"] is (re)computed here so that it
    always matches the data; the caller's dict is not modified."""
    names = [name for name, _ in sections]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate section names: {names}")
    header = dict(header)
    header["sections"] = [
        {"name": name, "bytes": len(data), "crc32": zlib.crc32(data)} for name, data in sections
    ]
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encoded = _deflate(text.encode("utf-8"), FORMAT_VERSION)
    body = _FIXED.pack(FORMAT_VERSION, len(encoded)) + encoded
    return MAGIC + body + _CRC.pack(zlib.crc32(body)) + b"".join(bytes(data) for _, data in sections)


def unpack_container(data: bytes, *, source: str = "input") -> tuple[dict, dict[str, bytes]]:
    """Parse and fully validate a container; `source` names the file in error messages."""
    data = bytes(data)
    header, start = _read_header(io.BytesIO(data), len(data), source)
    out: dict[str, bytes] = {}
    offset = start
    for sec in header["sections"]:
        chunk = data[offset : offset + sec["bytes"]]
        if zlib.crc32(chunk) != sec["crc32"]:
            raise CorruptFileError(f"{source} is corrupt: section {sec['name']!r} fails its CRC check")
        out[sec["name"]] = chunk
        offset += sec["bytes"]
    return header, out


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Header and total file size, reading only the header bytes (for `vdmcodec info`).
    The section sizes are still checked against the file size, so a truncated file is
    reported here too; section CRCs are not (that needs the whole file)."""
    with open_input(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        header, _ = _read_header(fh, size, str(path))
    return header, size


def read_sections(path: str | os.PathLike, names: set[str]) -> dict[str, bytes]:
    """Only the named sections of a file, CRC-checked (for `vdmcodec info`: the metadata
    sections, not the whole coded image)."""
    out = {}
    with open_input(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        header, offset = _read_header(fh, size, str(path))
        for sec in header["sections"]:
            if sec["name"] in names:
                fh.seek(offset)
                chunk = fh.read(sec["bytes"])
                if zlib.crc32(chunk) != sec["crc32"]:
                    raise CorruptFileError(f"{path} is corrupt: section {sec['name']!r} fails its CRC check")
                out[sec["name"]] = chunk
            offset += sec["bytes"]
    return out


def _read_header(fh: BinaryIO, size: int, source: str) -> tuple[dict, int]:
    """Validate everything up to the sections; return the header and where sections start."""
    prefix = fh.read(_PREFIX_SIZE)
    _check_magic(prefix, source)
    _check_version(prefix, source)
    if len(prefix) < _PREFIX_SIZE:
        raise _truncated(source, "before the header length")
    version, length = _FIXED.unpack_from(prefix, len(MAGIC))
    start = _PREFIX_SIZE + length + _CRC.size
    if start > size:
        raise _truncated(source, f"the header needs {start} bytes, the file has {size}")
    rest = fh.read(length + _CRC.size)
    if len(rest) != length + _CRC.size:
        raise _truncated(source, "while reading the header")
    text, (crc,) = rest[:length], _CRC.unpack(rest[length:])
    if zlib.crc32(prefix[len(MAGIC):] + text) != crc:
        raise CorruptFileError(f"{source} is corrupt: the header fails its CRC check")
    header = _parse_header(text, version, source)
    _check_section_sizes(header["sections"], size - start, source)
    return header, start


def _check_magic(prefix: bytes, source: str) -> None:
    head = prefix[: len(MAGIC)]
    if head == MAGIC:
        return
    if not head:
        raise CorruptFileError(f"{source} is empty, not a .vdmc file")
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise _truncated(source, "inside the magic number")
    raise CorruptFileError(f"{source} is not a .vdmc file")


def _check_version(prefix: bytes, source: str) -> None:
    """Checked before the header CRC so that a file from a newer vdmcodec gets a version
    message rather than a misleading 'corrupt' one."""
    if len(prefix) < len(MAGIC) + 2:
        raise _truncated(source, "before the format version")
    (version,) = struct.unpack_from("<H", prefix, len(MAGIC))
    if version not in READ_VERSIONS:
        # a newer writer and a damaged version field look the same from here: say both
        why = ("a newer vdmcodec wrote it, or its version field is damaged" if version > FORMAT_VERSION
               else "no vdmcodec writes it: the version field is damaged")
        raise UnsupportedVersionError(
            f"{source} says .vdmc format version {version}, which this vdmcodec does not read "
            f"(it reads {', '.join(map(str, READ_VERSIONS))}): {why}"
        )


def _zdict(version: int) -> dict:
    """zlib's keyword for the preset dictionary of this format version's header (none before 10)."""
    return {"zdict": HEADER_ZDICT_V10} if version >= 10 else {}


def _deflate(raw: bytes, version: int) -> bytes:
    # the header is a few hundred bytes of JSON: raw DEFLATE halves it, which matters for
    # 32x32 images (one byte is 0.003 bpd there), and the preset dictionary leaves little more
    # than what differs between files (one byte is 7e-6 bpd on a Kodak image)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **_zdict(version))
    return comp.compress(raw) + comp.flush()


def _inflate(blob: bytes, version: int, source: str) -> bytes:
    try:
        dec = zlib.decompressobj(-15, **_zdict(version))
        raw = dec.decompress(blob, 1 << 24)
        if dec.unconsumed_tail or dec.unused_data or not dec.eof:
            raise zlib.error("header does not end where it should")
        return raw
    except zlib.error as exc:
        raise CorruptFileError(f"{source} is corrupt: the header does not inflate ({exc})") from None


def _parse_header(text: bytes, version: int, source: str) -> dict:
    text = _inflate(text, version, source)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{source} is corrupt: the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{source} is corrupt: the header is not a JSON object")
    _check_section_list(header.get("sections"), source)
    return _with_image_defaults(header, source)


def _with_image_defaults(header: dict, source: str) -> dict:
    """Every image entry whole again: image_columns and image_defaults merged under each
    one's own fields."""
    if "image_defaults" not in header and "image_columns" not in header:
        return header
    defaults, columns = header.pop("image_defaults", {}), header.pop("image_columns", {})
    images = header.get("images")
    bad = CorruptFileError(f"{source} is corrupt: malformed image_defaults, image_columns or images in the header")
    if not isinstance(defaults, dict) or not isinstance(columns, dict) or not isinstance(images, list) \
            or not all(isinstance(e, dict) for e in images):
        raise bad
    for key, col in columns.items():
        values = col if isinstance(col, list) else _split_column(col, len(images), bad)
        if len(values) != len(images):
            raise bad
        images = [dict(e, **{key: v}) for e, v in zip(images, values)]
    header["images"] = [dict(defaults, **e) for e in images]
    return header


def _split_column(col: object, n: int, bad: Exception) -> list:
    """A column of n equal-length strings written as their concatenation."""
    if not isinstance(col, str) or n < 1 or len(col) % n:
        raise bad
    width = len(col) // n
    return [col[i * width : (i + 1) * width] for i in range(n)]


def _check_section_list(sections: object, source: str) -> None:
    """The header CRC guards against accidents, not against crafted files: check types so
    that later code can index the entries without surprises."""
    bad = CorruptFileError(f"{source} is corrupt: the header has no valid 'sections' list")
    if not isinstance(sections, list):
        raise bad
    names = set()
    for sec in sections:
        if not (
            isinstance(sec, dict)
            and isinstance(sec.get("name"), str)
            and _is_uint(sec.get("bytes"), 1 << 63)
            and _is_uint(sec.get("crc32"), 1 << 32)
            and sec["name"] not in names
        ):
            raise bad
        names.add(sec["name"])


def _is_uint(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _check_section_sizes(sections: list[dict], available: int, source: str) -> None:
    needed = sum(sec["bytes"] for sec in sections)
    if needed > available:
        raise _truncated(source, f"the sections need {needed} bytes, only {available} are present")
    if needed < available:
        raise CorruptFileError(
            f"{source} is corrupt: {available - needed} unexpected bytes after the last section"
        )


def _truncated(source: str, where: str) -> CorruptFileError:
    return CorruptFileError(f"{source} is truncated ({where})")
