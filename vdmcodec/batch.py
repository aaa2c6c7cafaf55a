"""Folders of images: one file in, one file out, for a whole tree; resumable, per-file errors.

``compress_tree(src, dst)`` mirrors the folder tree of ``src`` under ``dst`` with one
``.vdmc`` per image, ``decompress_tree`` the other way.  An output that already exists and
is intact (its CRCs hold and its pixel hash is the input's) is kept, so a rerun after an
interruption resumes where it stopped; outputs are only written, atomically, after they
decoded back to the same pixels.  A file that fails is reported with its error and exit
code and the batch goes on; files that are not images are listed, not failures.

>>> import tempfile, pathlib
>>> src = pathlib.Path(tempfile.mkdtemp())
>>> (src / "notes.txt").write_text("not an image")
12
>>> [(r.input.name, r.status) for r in plan_compress(src, src.parent / "out")[1]]
[('notes.txt', 'skipped')]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import OutputExistsError, UsageError, VdmcError
from .files import IMAGE_SUFFIXES
VDMC_SUFFIX = ".vdmc"


@dataclass
class FileResult:
    """What happened to one input of a batch."""

    input: Path
    output: Path | None
    status: str  # "compressed" / "decompressed", "done" (intact output kept), "skipped", "failed"
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    record: dict = field(default_factory=dict)  # compress's per-image numbers (bytes, bpd, ...)
    notes: list[str] = field(default_factory=list)  # what the user should hear (metadata not kept, ...)

    def as_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("record", "notes")}
        out.update(input=str(self.input), output=None if self.output is None else str(self.output))
        return dict(self.record, **out)


def _tree_files(src: Path, exclude: Path | None) -> list[Path]:
    """Every file under src in a stable order, leaving out exclude's subtree (an output
    folder inside the input folder must not be read as input)."""
    files = []
    for p in sorted(src.rglob("*")):
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        if p.is_file():
            files.append(p)
    return files


def check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise UsageError(f"{src} is not a folder")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"-o {dst}: a file is in the way of the output folder")
    if dst.resolve() == src.resolve():
        raise UsageError("the output folder must differ from the input folder")


def plan_compress(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """(input, output) pairs for the images under src, and the files left out: not images,
    or a second image whose output name (stem + .vdmc) an earlier one already takes."""
    src, dst = Path(src), Path(dst)
    pairs, left_out, taken = [], [], {}
    for f in _tree_files(src, dst.resolve() if dst.resolve().is_relative_to(src.resolve()) else None):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            left_out.append(FileResult(f, None, "skipped", "not an image (by its suffix)"))
            continue
        out = (dst / f.relative_to(src)).with_suffix(VDMC_SUFFIX)
        if out in taken:
            left_out.append(FileResult(f, out, "failed", f"{out} is already the output of {taken[out]}; rename one",
                                       UsageError.exit_code))
            continue
        taken[out] = f
        pairs.append((f, out))
    return pairs, left_out


def plan_decompress(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """(.vdmc, image) pairs under src (each image as stem + .png), and the other files."""
    src, dst = Path(src), Path(dst)
    pairs, left_out = [], []
    for f in _tree_files(src, dst.resolve() if dst.resolve().is_relative_to(src.resolve()) else None):
        if f.suffix.lower() != VDMC_SUFFIX:
            left_out.append(FileResult(f, None, "skipped", "not a .vdmc file"))
            continue
        pairs.append((f, (dst / f.relative_to(src)).with_suffix(".png")))
    return pairs, left_out


def intact_output(out: Path, img) -> bool:
    """Whether out is a finished .vdmc of exactly this image: every CRC holds and its pixel
    hash is the image's (a file only reaches its name after it decoded back exactly)."""
    from .container import unpack_container
    from .image_io import pixel_sha256

    try:
        header, _ = unpack_container(out.read_bytes(), source=str(out))
        entries = header["images"]
        return len(entries) == 1 and entries[0].get("pixel_sha256") == pixel_sha256(img).hex()
    except (OSError, VdmcError, KeyError, TypeError):
        return False


def compress_file(inp: Path, out: Path, coder, *, force: bool = False, verify: bool = True,
                  max_pixels: int | None = None, progress=None, data: bytes | None = None,
                  seed_nelbo: bool = True) -> FileResult:
    """One image to one .vdmc: encoded, decoded back and compared, then written atomically.
    data: the input file's bytes when the caller has read them already; seed_nelbo: report
    the image's NELBO (compress_images)."""
    from .codec import compress_images, verify_roundtrip
    from .files import atomic_write_bytes
    from .image_io import load_image, load_image_bytes

    t0 = time.perf_counter()
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    img = load_image(inp, **limit) if data is None else load_image_bytes(data, str(inp), **limit)
    if out.exists() and not force:
        if intact_output(out, img):
            return FileResult(inp, out, "done", seconds=time.perf_counter() - t0)
        raise OutputExistsError(f"{out} exists and is not a finished file of {inp} (use -f to overwrite)")
    dec_s = None
    with coder.remembering(verify):
        coded, reports = compress_images([(inp.stem, img)], coder, progress=progress, seed_nelbo=seed_nelbo)
        enc_s = time.perf_counter() - t0
        if verify:
            t1 = time.perf_counter()
            verify_roundtrip(coded, [(inp.stem, img)], coder, progress=progress)
            dec_s = time.perf_counter() - t1
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, coded, overwrite=force)
    rec = compressed_record(inp, out, img, reports[0], coded, reports[0].dims, enc_s, dec_s, archive=False)
    return FileResult(inp, out, "compressed", seconds=time.perf_counter() - t0, record=rec,
                      notes=source_notes(inp, img, rec))


def decompress_file(inp: Path, out: Path, *, force: bool = False, checkpoint: str | None = None,
                    device: str | None = None, coder=None, progress=None) -> FileResult:
    """One single-image .vdmc back to its image (PNG keeps every pixel and all metadata)."""
    from .codec import decompress_bytes
    from .image_io import save_image

    t0 = time.perf_counter()
    if out.exists() and not force:
        if _same_image(inp, out):
            return FileResult(inp, out, "done", seconds=time.perf_counter() - t0)
        raise OutputExistsError(f"{out} exists and is not the image of {inp} (use -f to overwrite)")
    images = decompress_bytes(inp.read_bytes(), checkpoint=checkpoint, device=device, coder=coder, progress=progress)
    if len(images) != 1:
        raise UsageError(f"{inp} is an archive of {len(images)} images; decompress it on its own")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images[0][1], out, overwrite=force)
    return FileResult(inp, out, "decompressed", seconds=time.perf_counter() - t0)


def _same_image(vdmc: Path, image: Path) -> bool:
    """Whether image holds the pixels a single-image .vdmc names by its hash (no decoding)."""
    from .container import read_header
    from .image_io import load_image, pixel_sha256

    try:
        entries = read_header(vdmc)[0]["images"]
        return len(entries) == 1 and entries[0].get("pixel_sha256") == pixel_sha256(load_image(image)).hex()
    except (OSError, VdmcError, KeyError, TypeError):
        return False


def run_batch(pairs: list[tuple[Path, Path]], work: Callable[[Path, Path], FileResult],
              on_result: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """work() on every pair; a VdmcError (or an OS error) fails that file only."""
    results = []
    for inp, out in pairs:
        t0 = time.perf_counter()
        try:
            res = work(inp, out)
        except VdmcError as exc:
            res = FileResult(inp, out, "failed", str(exc), exc.exit_code, time.perf_counter() - t0)
        except OSError as exc:
            res = FileResult(inp, out, "failed", f"{exc.strerror or exc}", 7, time.perf_counter() - t0)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


def _tree(pairs: list[tuple[Path, Path]], left_out: list[FileResult], work, on_result) -> list[FileResult]:
    """Report the files left out, run work on the rest; every result in path order."""
    for r in left_out:
        if on_result is not None:
            on_result(r)
    return sorted(run_batch(pairs, work, on_result) + left_out, key=lambda r: str(r.input))


def compress_tree(src, dst, *, coder=None, checkpoint: str | None = None, effort: str = "default",
                  threads: int = 0, force: bool = False, verify: bool = True, max_pixels: int | None = None,
                  seed_nelbo: bool = True, on_result: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Every image under src to a .vdmc under dst, mirroring folders; see the module docs.

    The Python form of ``vdmcodec compress SRC -o DST --recursive``: returns one FileResult
    per file under src (compressed, done, skipped or failed), in path order."""
    from .checkpoints import load_checkpoint
    from .codec import Coder

    src, dst = Path(src), Path(dst)
    check_folders(src, dst)
    pairs, left_out = plan_compress(src, dst)
    if coder is None and pairs:
        coder = Coder.for_effort(load_checkpoint(checkpoint), effort, threads=threads)
    return _tree(pairs, left_out, lambda i, o: compress_file(i, o, coder, force=force, verify=verify,
                                                             max_pixels=max_pixels, seed_nelbo=seed_nelbo), on_result)


def decompress_tree(src, dst, *, checkpoint: str | None = None, device: str | None = None, force: bool = False,
                    on_result: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """Every .vdmc under src back to an image under dst (stem + .png), mirroring folders."""
    src, dst = Path(src), Path(dst)
    check_folders(src, dst)
    pairs, left_out = plan_decompress(src, dst)
    return _tree(pairs, left_out, lambda i, o: decompress_file(i, o, force=force, checkpoint=checkpoint,
                                                               device=device), on_result)


def summary(results: list[FileResult]) -> str:
    """One line: how many files ended how."""
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = ["compressed", "decompressed", "done", "skipped", "failed"]
    words = {"done": "already done", "skipped": "not images (left alone)"}
    return ", ".join(f"{counts[s]} {words.get(s, s)}" for s in order if s in counts) or "no files"


def compressed_record(inp, out_path, img, rep, data: bytes, total_dims: int, enc_s: float, dec_s: float | None,
                      *, archive: bool) -> dict:
    """compress's per-image numbers (the --json record): sizes, rates, times, what was kept."""
    from .image_io import LOSSY_FORMATS

    share = rep.dims / total_dims if total_dims else 1.0
    nbytes = (rep.exact_bits / 8 + rep.side_bytes + rep.context_bytes + rep.film_bytes) if archive else len(data)
    rec = {
        "input": str(inp),
        "output": str(out_path),
        "width": rep.width,
        "height": rep.height,
        "mode": rep.mode,
        "bytes": round(nbytes) if archive else nbytes,
        "bpd": 8 * nbytes / rep.dims,
        "nelbo_bpd": rep.nelbo_bits / rep.dims if rep.nelbo_bits else None,
        "overhead_bytes": round(nbytes - rep.nelbo_bits / 8) if rep.nelbo_bits else None,
        "encode_seconds": enc_s * share,
        "method": rep.method,
        "regions": rep.regions,
        "seed_bytes": rep.seed_bytes,
        "classic_rows": rep.classic_rows,
        "side_bytes": rep.side_bytes,
        "context_bytes": rep.context_bytes,
        "film_bytes": rep.film_bytes,
        "bitsback_bytes": rep.bitsback_bytes or None,
        "estimated_bitsback_bytes": rep.estimated_bytes or None,
        "skipped_chain": rep.skipped_chain,
        "skipped_before_fits": rep.skipped_before_fits,
        "estimate_partial": rep.estimate_partial,
        "coder_overhead_bits": rep.exact_bits - rep.implied_bits if rep.method == "bitsback" and rep.implied_bits else None,
        "sampling_bits": rep.implied_bits - rep.nelbo_bits if rep.method == "bitsback" and rep.nelbo_bits else None,
        "terms_bpd": {k: v / rep.dims for k, v in rep.terms.items()},
        "metadata": img.metadata.describe(),
        "dropped_metadata": list(img.dropped),
    }
    if dec_s is not None:
        rec["decode_seconds"] = dec_s * share
    if archive:
        rec["archive_bytes"] = len(data)
    if img.source_format in LOSSY_FORMATS:
        rec["source_format"], rec["source_bytes"] = img.source_format, Path(inp).stat().st_size
    return rec


def source_notes(inp, img, rec: dict) -> list[str]:
    """What the user should hear about a source beyond the numbers: metadata not kept, and
    that a lossy source's decoded pixels were coded (and against what size)."""
    notes = []
    if img.dropped:
        notes.append(f"{inp}: not kept: {', '.join(img.dropped)}")
    if "source_bytes" in rec:
        notes.append(f"{inp}: a {rec['source_format']} file: its decoded pixels are coded exactly, "
                     f"{rec['bytes'] / rec['source_bytes']:.1f}x the size of the {rec['source_format']} file; "
                     f"keep the original to keep those bytes")
    return notes
