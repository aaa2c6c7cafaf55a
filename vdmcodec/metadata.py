"""An image's metadata (EXIF, XMP, text, resolution, colour chunks), carried byte for byte.

A lossless codec gives back the file's content, not only its pixels: a phone photo's EXIF
orientation, a scan's resolution, a PNG's text chunks.  The ICC profile travels on its own
(every output format takes one); everything else lives here as an ordered list of named
byte strings, stored in one container section.  No PIL and no torch: ``info`` reads it.

Names:
  ``png:<slot>:<TYPE>``  a PNG ancillary chunk, its data exactly as in the source; slot 0
                         before PLTE/IDAT, 1 between PLTE and IDAT, 2 after IDAT
  ``exif``, ``xmp``, ``comment``  from other formats (JPEG, WebP, TIFF), as Pillow reads them
  ``dpi``                ASCII ``"x,y"`` (other formats; a PNG keeps its pHYs chunk)

>>> m = ImageMetadata((("exif", b"Exif\\x00\\x00MM"), ("png:0:gAMA", b"\\x00\\x00\\xb1\\x8f")))
>>> unpack_metadata(pack_metadata(m)) == m
True
>>> m.exif()
b'Exif\\x00\\x00MM'
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_KEYWORD = b"XML:com.adobe.xmp"
# chunks that describe pixels or are rebuilt from the image itself: never copied as metadata
_PNG_PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"iCCP", b"acTL", b"fcTL", b"fdAT"}
_MAX_ITEMS = 4096


@dataclass(frozen=True)
class ImageMetadata:
    """Named byte strings in source order (see the module docstring for the names)."""

    items: tuple[tuple[str, bytes], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    def get(self, name: str) -> bytes | None:
        return next((data for n, data in self.items if n == name), None)

    def png_chunks(self) -> list[tuple[int, bytes, bytes]]:
        """The PNG chunks as (slot, type, data)."""
        out = []
        for name, data in self.items:
            if name.startswith("png:"):
                _, slot, ctype = name.split(":", 2)
                out.append((int(slot), ctype.encode("latin-1"), data))
        return out

    def exif(self) -> bytes | None:
        """The EXIF block (a PNG's eXIf chunk counts)."""
        return self.get("exif") or next((d for _, t, d in self.png_chunks() if t == b"eXIf"), None)

    def xmp(self) -> bytes | None:
        """The XMP packet (a PNG's iTXt chunk with the XMP keyword counts)."""
        return self.get("xmp") or next((x for _, t, d in self.png_chunks() if t == b"iTXt"
                                        for x in [_itxt_xmp(d)] if x is not None), None)

    def dpi(self) -> tuple[float, float] | None:
        raw = self.get("dpi")
        if raw is not None:
            x, y = raw.decode("ascii").split(",")
            return float(x), float(y)
        for _, t, d in self.png_chunks():
            if t == b"pHYs" and len(d) == 9 and d[8] == 1:  # pixels per metre
                px, py = struct.unpack(">II", d[:8])
                return px * 0.0254, py * 0.0254
        return None

    def describe(self) -> list[str]:
        """One short label per item, e.g. 'exif (1,024 bytes)', 'png tEXt Title (12 bytes)'."""
        out = []
        for name, data in self.items:
            if name.startswith("png:"):
                ctype = name.split(":", 2)[2]
                key = data.split(b"\x00", 1)[0].decode("latin-1") if ctype in ("tEXt", "zTXt", "iTXt") else ""
                name = f"png {ctype}" + (f" {key}" if key else "")
            out.append(f"{name} ({len(data):,} bytes)")
        return out


def pack_metadata(meta: ImageMetadata) -> bytes:
    """count (u16), then per item: name length (u16), name (UTF-8), data length (u32), data."""
    out = [struct.pack(">H", len(meta.items))]
    for name, data in meta.items:
        raw = name.encode("utf-8")
        out += [struct.pack(">H", len(raw)), raw, struct.pack(">I", len(data)), bytes(data)]
    return b"".join(out)


def unpack_metadata(blob: bytes) -> ImageMetadata:
    """The inverse of pack_metadata; ValueError on anything malformed."""
    try:
        (n,), i = struct.unpack_from(">H", blob, 0), 2
        items = []
        for _ in range(n):
            (ln,), i = struct.unpack_from(">H", blob, i), i + 2
            name, i = blob[i : i + ln].decode("utf-8"), i + ln
            (ld,), i = struct.unpack_from(">I", blob, i), i + 4
            if i + ld > len(blob):
                raise ValueError("metadata section is malformed (an item runs past its end)")
            items.append((name, bytes(blob[i : i + ld])))
            i += ld
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"metadata section is malformed ({exc})") from None
    if i != len(blob):
        raise ValueError("metadata section is malformed (trailing bytes)")
    for name, _ in items:
        if name.startswith("png:"):
            parts = name.split(":", 2)
            if len(parts) != 3 or parts[1] not in ("0", "1", "2") or len(parts[2]) != 4:
                raise ValueError(f"metadata section is malformed ({name!r} is not a PNG chunk name)")
    return ImageMetadata(tuple(items))


def png_metadata(data: bytes) -> ImageMetadata:
    """The ancillary chunks of a PNG file (its bytes), in order, with where each sat; an
    empty record when data is not a readable PNG (Pillow reports that, not this)."""
    if not data.startswith(PNG_SIGNATURE):
        return ImageMetadata()
    items, i, slot = [], len(PNG_SIGNATURE), 0
    while i + 8 <= len(data) and len(items) < _MAX_ITEMS:
        length, ctype = struct.unpack_from(">I4s", data, i)
        body = data[i + 8 : i + 8 + length]
        i += 12 + length
        if ctype == b"PLTE" and slot == 0:
            slot = 1
        elif ctype == b"IDAT":
            slot = 2
        elif ctype == b"IEND":
            break
        elif ctype not in _PNG_PIXEL_CHUNKS and ctype[:1].islower() and len(body) == length:
            items.append((f"png:{slot}:{ctype.decode('latin-1')}", body))
    return ImageMetadata(tuple(items))


def splice_png_chunks(png: bytes, chunks: list[tuple[int, bytes, bytes]]) -> bytes:
    """A PNG file (from our own writer) with the given (slot, type, data) chunks inserted at
    their slots: 0 right after IHDR, 1 right before the first IDAT (after PLTE), 2 right
    before IEND.  Chunks of a type the writer already wrote are left out (the writer's
    come from the image itself)."""
    parts, i = [png[: len(PNG_SIGNATURE)]], len(PNG_SIGNATURE)
    written = []
    while i < len(png):
        length, ctype = struct.unpack_from(">I4s", png, i)
        written.append((ctype, png[i : i + 12 + length]))
        i += 12 + length
    have = {t for t, _ in written}
    todo = {s: [_chunk(t, d) for slot, t, d in chunks if slot == s and t not in have] for s in (0, 1, 2)}
    idat_seen = False
    for ctype, raw in written:
        if ctype == b"IDAT" and not idat_seen:
            parts += todo[1]
            idat_seen = True
        if ctype == b"IEND":
            parts += todo[2]
        parts.append(raw)
        if ctype == b"IHDR":
            parts += todo[0]
    return b"".join(parts)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _itxt_xmp(data: bytes) -> bytes | None:
    """The text of an iTXt chunk whose keyword is the XMP one, else None."""
    key, _, rest = data.partition(b"\x00")
    if key != XMP_KEYWORD or len(rest) < 2:
        return None
    compressed, fields = rest[0], rest[2:]
    _lang, _, fields = fields.partition(b"\x00")
    _tkey, _, text = fields.partition(b"\x00")
    try:
        return zlib.decompress(text) if compressed else text
    except zlib.error:
        return None
