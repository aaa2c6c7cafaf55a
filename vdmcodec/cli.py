"""The `vdmcodec` command line.  No maths here: it reads arguments, calls codec/evaluate,
writes files atomically, and maps every error to its exit code in one place (`run`).
Data goes to stdout, progress bars and messages to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import (
    CorruptFileError,
    InputNotFoundError,
    OutputExistsError,
    OutputNotWritableError,
    SomeFilesFailedError,
    UsageError,
    VdmcError,
)

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left


def _progress(total: int, desc: str):
    """A tqdm bar on stderr, silent when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="px·step", unit_scale=True, file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)


def run(fn):
    """Run a command body; every error becomes one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        show_tb = bool(ctx.find_root().params.get("traceback"))
        try:
            return fn(*args, **kwargs)
        except VdmcError as exc:
            if show_tb:
                traceback.print_exc()
            click.echo(f"vdmcodec: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vdmcodec: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # stdout's reader went away (`vdmcodec info F | head`): nothing is wrong
            try:  # stdout to /dev/null, so that flushing it at exit raises nothing more
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # no real file behind stdout (a test runner's)
                pass
            ctx.exit(EXIT_BROKEN_PIPE)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # a bug: say so plainly, no traceback unless asked
            if show_tb:
                traceback.print_exc()
            click.echo(f"vdmcodec: internal error: {type(exc).__name__}: {exc} (run with --traceback for details)", err=True)
            ctx.exit(EXIT_INTERNAL)

    return wrapper


def _versions() -> str:
    import constriction  # noqa: F401
    import numpy
    import torch

    from .coding.ans import ANS_NAME, ANS_VERSION

    lines = [f"vdmcodec {__version__}", f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})",
             f"{ANS_NAME} {ANS_VERSION}", f"numpy {numpy.__version__}"]
    try:
        from .checkpoints import default_checkpoint_path, file_sha256, read_checkpoint

        p = default_checkpoint_path()
        lines.append(f"default model {read_checkpoint(p)['model_id']} sha256 {file_sha256(p)}")
    except VdmcError as exc:
        lines.append(f"default model: unavailable ({exc})")
    return "\n".join(lines)


def _print_version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show versions that matter for exact decoding, and exit.")
@click.option("--traceback", is_flag=True, help="Show Python tracebacks on errors.")
def main(traceback: bool):
    """Lossless image compression with a variational diffusion model and bits-back ANS."""


# ------------------------------------------------------------------ compress
def _load_coder(checkpoint, device, threads, effort: str = "default", ensemble: str | None = None,
                image_context: bool = True):
    import torch

    from .checkpoints import load_checkpoint
    from .codec import Coder

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return Coder.for_effort(load_checkpoint(checkpoint, device), effort, None if ensemble is None else int(ensemble),
                            device=device, threads=threads or 0, adapt_context=image_context)


def _plan_outputs(inputs: list[Path], output: str | None, archive: bool, suffix: str) -> list[Path]:
    if output and (archive or len(inputs) == 1) and suffix == ".vdmc":
        from .files import IMAGE_SUFFIXES

        if Path(output).suffix.lower() in IMAGE_SUFFIXES:  # a .vdmc named like an image misleads every tool
            raise UsageError(f"-o {output}: compress writes a .vdmc file; give it a .vdmc name")
    if archive:
        if not output:
            raise UsageError("--archive needs -o ARCHIVE.vdmc")
        return [Path(output)]
    if len(inputs) == 1:
        return [Path(output) if output else inputs[0].with_suffix(suffix)]
    folder = Path(output) if output else None
    outs = [(folder / p.stem).with_suffix(suffix) if folder else p.with_suffix(suffix) for p in inputs]
    if len(set(outs)) != len(outs):
        raise UsageError("several inputs would write the same output file; use --archive or rename inputs")
    return outs


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot create folder {folder}: {exc.strerror or exc}") from None


def _check_writable(paths: list[Path], folder_may_be_made: bool = False) -> None:
    from .files import check_writable

    for folder in {p.parent for p in paths}:  # one probe per folder
        check_writable(next(p for p in paths if p.parent == folder), folder_may_be_made=folder_may_be_made)


def _check_room(outputs: list[Path], rasters) -> None:
    from .files import check_room

    raw = sum(r.width * r.height * (4 if r.alpha is not None else 3) for r in rasters)
    check_room(outputs[0].parent, raw)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise OutputExistsError(f"{p} exists (use -f to overwrite)")


_effort_option = click.option(
    "--effort", type=click.Choice(["fast", "default", "max"]), default="default", show_default=True,
    help="Network calls per region with T = 64: fast 28, default 49, max 113 (on Kodak about "
         "0.01 bpd below default). Recorded in the file.")
_ensemble_option = click.option(
    "--ensemble", type=click.Choice(["1", "2", "4"]), default=None,
    help="Network calls on each of the first quarter of the diffusion steps, averaged over "
         "flipped copies (default: the effort's, 1 / 2 / 4).")
_image_context_option = click.option(
    "--image-context/--no-image-context", default=True, show_default=True,
    help="Fit each image's own pixel-context weights and send them (0.7-1.4 kB for RGB) when "
         "they pay for themselves on pixels the fit did not see; about 6 s per image.")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", help="Output file (one input or --archive) or folder (several inputs).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--no-verify", is_flag=True, help="Skip the decode check (faster; not recommended).")
@click.option("--archive", is_flag=True, help="Write all inputs into one file with one chained stream.")
@click.option("--checkpoint", help="Model checkpoint (path or name in checkpoints/); default: the shipped one.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Coding threads (recorded in the file; default: cores, max 8).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images declaring more pixels than this (default: 2^26, about 67 MP).")
@_effort_option
@_ensemble_option
@_image_context_option
@click.option("-r", "--recursive", is_flag=True,
              help="IMAGES is one folder: compress every image under it into -o OUTDIR, mirroring the "
                   "tree; reruns keep finished outputs, failures do not stop the batch.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="With --recursive: spread the files over Ray (pip install 'vdmcodec[ray]'): a local Ray "
                   "on this machine, or the cluster at ADDRESS (a shared file system).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --ray: coding workers (default: the cluster's CPUs over --threads).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@run
def compress(images, output, force, no_verify, archive, checkpoint, device, threads, max_pixels, effort, ensemble,
             image_context, recursive, ray_address, workers, as_json):
    """Compress images (PNG, ...) to .vdmc files."""
    from .image_io import load_image

    inputs = list(images)
    if ray_address is not None and not recursive:
        raise UsageError("--ray works on folders: add --recursive")
    if recursive and ray_address is not None:
        _check_tree_args(inputs, output, recursive, archive, "compress")
        return _compress_tree_ray(inputs[0], Path(output), ray_address, checkpoint, effort, threads or 1, workers,
                                  force, not no_verify, max_pixels, as_json)
    if recursive or any(p.is_dir() for p in inputs):
        _check_tree_args(inputs, output, recursive, archive, "compress")
        coder = _load_coder(checkpoint, device, threads, effort, ensemble, image_context)
        return _compress_tree(inputs[0], Path(output), coder, force, not no_verify, max_pixels, as_json)
    if archive and len({p.stem for p in inputs}) != len(inputs):
        raise UsageError("archive members need distinct file names (stems); rename the inputs")
    outputs = _plan_outputs(inputs, output, archive, ".vdmc")
    _refuse_existing(outputs, force)
    _check_writable(outputs, folder_may_be_made=not archive and len(inputs) > 1)
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    rasters = [(p.stem, load_image(p, **limit)) for p in inputs]  # all inputs checked before any work
    _check_room(outputs, [r for _, r in rasters])
    coder = _load_coder(checkpoint, device, threads, effort, ensemble, image_context)
    if not archive and len(inputs) > 1 and output:
        _make_folder(Path(output))
    groups = [(rasters, outputs[0], inputs)] if archive else [([r], o, [i]) for r, o, i in zip(rasters, outputs, inputs)]
    for group, out_path, group_inputs in groups:
        _compress_group(group, out_path, group_inputs, coder, force, no_verify, archive, as_json)


def _compress_group(group, out_path, group_inputs, coder, force, no_verify, archive, as_json):
    """Encode one output file, verify it by decoding, write it atomically, report it."""
    from .codec import compress_images, verify_roundtrip
    from .files import atomic_write_bytes

    T = coder.step_model.T
    work = T * sum(r.width * r.height for _, r in group if r.planes is not None)
    dec_s = None
    with coder.remembering(verify=not no_verify):
        with _progress(work, f"encode {out_path.name}") as bar:
            t0 = time.perf_counter()
            # the NELBO beside the size costs a pass over the seed rows: only --json reports it
            data, reports = compress_images(group, coder, progress=bar.update, seed_nelbo=as_json)
            enc_s = time.perf_counter() - t0
        if not no_verify:
            with _progress(work, f"verify {out_path.name}") as bar:
                t0 = time.perf_counter()
                verify_roundtrip(data, group, coder, progress=bar.update)
                dec_s = time.perf_counter() - t0
    atomic_write_bytes(out_path, data, overwrite=force)
    total_dims = sum(r.dims for r in reports)
    for inp, (_, img), rep in zip(group_inputs, group, reports):
        _report_compressed(inp, out_path, img, rep, data, total_dims, enc_s, dec_s, archive, as_json)


def _check_tree_args(inputs: list[Path], output, recursive: bool, archive: bool, command: str) -> None:
    if not recursive:
        folder = next(p for p in inputs if p.is_dir())
        raise UsageError(f"{folder} is a folder; add --recursive to {command} every file under it")
    if len(inputs) != 1 or not inputs[0].is_dir():
        raise UsageError("--recursive takes exactly one input folder")
    if archive:
        raise UsageError("--recursive and --archive do not go together")
    if not output:
        raise UsageError("--recursive needs -o OUTDIR")


def _batch_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, disable=not sys.stderr.isatty())


def _finish_batch(results, kind: str) -> None:
    """The summary on stderr; exit 14 naming the failed files when there are any."""
    from .batch import summary

    click.echo(f"vdmcodec: {summary(results)}", err=True)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise SomeFilesFailedError(f"{len(failed)} of {len(results)} files failed to {kind}: "
                                   + "; ".join(f"{r.input} ({r.error})" for r in failed))


def _print_result(res, as_json: bool) -> None:
    for note in res.notes:
        click.echo(f"vdmcodec: {note}", err=True)
    if as_json:
        click.echo(json.dumps(res.as_json()))
    elif res.status == "failed":
        click.echo(f"vdmcodec: {res.input}: failed: {res.error}", err=True)
    elif res.status in ("compressed", "decompressed") and res.record:
        _print_compressed(res.input, dict(res.record, output=str(res.output)), None, False)
    elif res.status in ("compressed", "decompressed"):
        click.echo(f"{res.input} -> {res.output}")
    elif res.status == "done":
        click.echo(f"{res.input} -> {res.output}: already done")


def _run_tree(src: Path, dst: Path, plan, run, kind: str, as_json: bool) -> list:
    """One folder batch: a bar over every file under src (rate and ETA on stderr), each
    file's line or JSON as it ends, then the summary (exit 14 when any failed)."""
    from .batch import check_folders

    check_folders(src, dst)
    with _batch_bar(sum(len(part) for part in plan(src, dst)), f"{kind} {src}") as bar:
        def on_result(res):
            bar.update(1)
            _print_result(res, as_json)

        results = run(on_result)
    return results


def _compress_tree(src: Path, dst: Path, coder, force: bool, verify: bool, max_pixels, as_json: bool) -> None:
    from .batch import compress_tree, plan_compress

    results = _run_tree(src, dst, plan_compress, lambda on_result: compress_tree(
        src, dst, coder=coder, force=force, verify=verify, max_pixels=max_pixels, seed_nelbo=as_json,
        on_result=on_result), "compress", as_json)
    _finish_batch(results, "compress")


def _compress_tree_ray(src: Path, dst: Path, address: str, checkpoint, effort: str, threads: int, workers,
                       force: bool, verify: bool, max_pixels, as_json: bool) -> None:
    from .batch import plan_compress
    from .batch_ray import compress_tree_ray, machines

    results = _run_tree(src, dst, plan_compress, lambda on_result: compress_tree_ray(
        src, dst, address=address, checkpoint=checkpoint, effort=effort, threads=threads, workers=workers,
        force=force, verify=verify, max_pixels=max_pixels, on_result=on_result), "compress", as_json)
    kinds = machines(results)
    if len(kinds) > 1:  # until files are portable, say which files need which machine type
        for kind, files in kinds.items():
            click.echo(f"vdmcodec: {len(files)} files written on {kind}: decode them on that machine type", err=True)
    _finish_batch(results, "compress")


def _decompress_tree(src: Path, dst: Path, force: bool, checkpoint, device, as_json: bool) -> None:
    from .batch import decompress_tree, plan_decompress

    device = None if device == "auto" else device
    results = _run_tree(src, dst, plan_decompress, lambda on_result: decompress_tree(
        src, dst, checkpoint=checkpoint, device=device, force=force, on_result=on_result), "decompress", as_json)
    _finish_batch(results, "decompress")


def _report_compressed(inp, out_path, img, rep, data, total_dims, enc_s, dec_s, archive, as_json):
    from .batch import compressed_record

    _print_compressed(inp, compressed_record(inp, out_path, img, rep, data, total_dims, enc_s, dec_s, archive=archive),
                      img, as_json)


def _print_compressed(inp, rec: dict, img, as_json: bool) -> None:
    from .batch import source_notes

    for note in source_notes(inp, img, rec) if img is not None else []:
        click.echo(f"vdmcodec: {note}", err=True)
    if as_json:
        click.echo(json.dumps(rec))
        return
    skipped = rec.get("skipped_chain")
    estimated = "at least " if rec.get("estimate_partial") else "estimated " if skipped else ""
    theory = f", NELBO {estimated}{rec['nelbo_bpd']:.3f}" if rec["nelbo_bpd"] else ""
    check = ", verified" if "decode_seconds" in rec else ", not verified"
    method = rec["method"]
    bpd_per_byte = rec["bpd"] / rec["bytes"] if rec["bytes"] else 0.0
    if skipped and rec.get("estimated_bitsback_bytes"):
        at = "at least" if rec.get("estimate_partial") else "estimated at"
        method += f"; bits-back {at} {rec['estimated_bitsback_bytes'] * bpd_per_byte:.3f} bpd, not coded"
    elif method == "classic" and rec.get("bitsback_bytes"):
        method += f"; bits-back {rec['bitsback_bytes'] * bpd_per_byte:.3f} bpd"
    click.echo(f"{inp} -> {rec['output']}: {rec['bytes']} bytes, {rec['bpd']:.3f} bpd{theory} [{method}]{check}")


# ------------------------------------------------------------------ decompress
def _safe_name(name: str, idx: int) -> str:
    base = Path(str(name)).name.strip()
    return base if base and base not in (".", "..") else f"image{idx}"


def _unique_names(names: list[str]) -> list[str]:
    """Archive members written by other tools may share a name: never let one replace another."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}-{k + 1}")
    return out


def _read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path}: is a folder") from None
    except PermissionError:
        raise InputNotFoundError(f"{path}: cannot read (permission denied)") from None


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", help="Output image (default: beside the input, .png); a folder for archives.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--checkpoint", help="Use this checkpoint (its hash must match the file's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("-r", "--recursive", is_flag=True,
              help="FILE is a folder: decompress every .vdmc under it into -o OUTDIR as PNG, mirroring the tree.")
@click.option("--json", "as_json", is_flag=True, help="With --recursive: one JSON object per file on stdout.")
@run
def decompress(file, output, force, checkpoint, device, recursive, as_json):
    """Decompress a .vdmc file to the exact original image(s)."""
    from .files import IMAGE_SUFFIXES
    from .codec import decompress_bytes
    from .container import unpack_container
    from .image_io import check_output_format, save_image

    if recursive or file.is_dir():
        _check_tree_args([file], output, recursive, False, "decompress")
        return _decompress_tree(file, Path(output), force, checkpoint, device, as_json)
    data = _read_input(file)
    header, _ = unpack_container(data, source=str(file))
    entries = header.get("images") or []
    if header.get("archive") and output and Path(output).suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"-o {output}: {file} is an archive of {len(entries)} images; -o names a folder for them")
    if header.get("archive"):
        folder = Path(output) if output else (file.with_suffix("") if file.suffix else file.with_name(file.name + ".d"))
        outs = [folder / f"{name}.png" for name in _unique_names([_safe_name(e.get("name"), i) for i, e in enumerate(entries)])]
    else:
        outs = [Path(output) if output else file.with_suffix(".png")]
    _refuse_existing(outs, force)
    if header.get("archive") and folder.exists() and not folder.is_dir():
        raise OutputNotWritableError(f"cannot create folder {folder}: a file is in the way")
    for out, entry in zip(outs, entries):  # an unsuitable format or an unwritable place: said before the decode
        check_output_format(out, str(entry.get("mode")))
    _check_writable(outs, folder_may_be_made=bool(header.get("archive")))
    T = int(header.get("coder", {}).get("T", 0))
    work = T * sum(int(e.get("width", 0)) * int(e.get("height", 0)) for e in entries if e.get("method") == "bitsback")
    with _progress(work, f"decode {file.name}") as bar:
        images = decompress_bytes(data, checkpoint=checkpoint, device=device, progress=bar.update)
    if header.get("archive"):
        _make_folder(folder)
    for (name, img), out in zip(images, outs):
        dropped = save_image(img, out, overwrite=force)
        if dropped:
            click.echo(f"vdmcodec: {out}: its format cannot hold {', '.join(dropped)}; write .png to keep them", err=True)
        click.echo(f"{file} -> {out}: {img.width}x{img.height} {img.mode}")


# ------------------------------------------------------------------ info
@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
@run
def info(file, as_json):
    """Show a .vdmc file's header: model, coder settings, images, size and bpd."""
    from .container import read_header
    from .header import file_rate

    if not file.exists():
        raise InputNotFoundError(f"{file}: no such file")
    header, size = read_header(file)
    images = header.get("images", [])
    rate = file_rate(header, size)
    metadata = _metadata_labels(file, images)  # before any output: a damaged section is an error alone
    codes = _classic_codes(file, images)
    if as_json:
        click.echo(json.dumps({"file": str(file), "bytes": size, "bpd": rate["bpd"],
                               "metadata": [metadata.get(i, []) for i in range(len(images))], "header": header}))
        return
    model = header.get("model", {})
    coder = header.get("coder", {})
    comp = header.get("compute", {})
    click.echo(f"file:     {file} ({size} bytes, {rate['bpd']:.4f} bpd over {rate['dims']} dims)" if rate["dims"]
               else f"file: {file}")
    click.echo(f"written:  {header.get('generator')}, {'archive' if header.get('archive') else 'single image'}")
    if model:
        click.echo(f"model:    {model.get('id')} sha256 {model.get('sha256')}")
        click.echo(f"coder:    {coder.get('name')} T={coder.get('T')} {coder.get('ans')} precision {coder.get('precision_bits')} bits")
        steps = comp.get("ensemble_steps", coder.get("T"))
        click.echo(f"steps:    {coder.get('T')} of the model's {(coder.get('plan') or [coder.get('T')])[-1]}, "
                   f"ensemble {comp.get('ensemble', 1)} on the first {steps}, "
                   f"{comp.get('z0_ensemble', 1)} at z0 (images with their own context; every image with a model trained on them)")
        arith = comp.get("arith", "float")
        portable = "exact arithmetic: decodes on any machine" if arith == "exact1" else "float arithmetic: decodes on machines like the writer's"
        click.echo(f"compute:  {comp.get('device')}, {comp.get('threads')} threads, torch {comp.get('torch')} "
                   f"({comp.get('cpu_capability')}); {portable}")
    else:
        click.echo("model:    none (classic code only; decodes without a model)")
    sizes = {sec.get("name"): sec.get("bytes") for sec in header.get("sections", [])}
    for i, e in enumerate(images):
        regions = len(e.get("layout", []))
        click.echo(f"image:    {e.get('name')}: {e.get('width')}x{e.get('height')} {e.get('mode')}, "
                   f"{e.get('method')}" + (f" ({codes[i]})" if i in codes else "")
                   + (f", {regions} regions" if regions else "")
                   + (", own pixel context" if e.get("pixel_context") else "")
                   + (", own FiLM deltas" if e.get("film") else ""))
        kept = ([f"icc profile ({sizes.get(e['icc'], 0):,} bytes)"] if e.get("icc") else []) + metadata.get(i, [])
        if kept:
            click.echo(f"metadata: {'; '.join(kept)}")


def _classic_codes(file, images: list[dict]) -> dict[int, str]:
    """The classic code inside each image stored whole as classic planes, in words."""
    from .coding.classic import describe
    from .container import read_sections

    names = {e["planes_section"]: i for i, e in enumerate(images) if e.get("planes_section")}
    return {names[name]: describe(blob[:2]) for name, blob in read_sections(file, set(names)).items()}


def _metadata_labels(file, images: list[dict]) -> dict[int, list[str]]:
    """Each image's metadata items as labels, read from its metadata section."""
    from .container import read_sections
    from .metadata import unpack_metadata

    names = {e["meta"]: i for i, e in enumerate(images) if e.get("meta")}
    out = {}
    for name, blob in read_sections(file, set(names)).items():
        try:
            out[names[name]] = unpack_metadata(blob).describe()
        except ValueError as exc:
            raise CorruptFileError(f"{file}: {exc}") from None
    return out


# ------------------------------------------------------------------ eval
def _expand_inputs(items) -> list[Path]:
    from .files import IMAGE_SUFFIXES

    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise InputNotFoundError(f"{p}: no such file or folder")
    return files


@main.command(name="eval")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--checkpoint", help="Model checkpoint; default: the shipped one.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0)
@click.option("--seed", type=int, default=0, help="Seed of the latents drawn (the NELBO is an expectation).")
@_effort_option
@_ensemble_option
@_image_context_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@run
def eval_cmd(inputs, checkpoint, device, threads, seed, effort, ensemble, image_context, as_json):
    """The model's NELBO (bits per dimension) on whole images at the coding T, without coding.

    With an image's own pixel-context weights (as compress would send them), the NELBO is
    under those weights, and total_bpd adds the bits that sending them costs."""
    from .evaluate import evaluate_image, mean_bpd
    from .image_io import load_image

    files = _expand_inputs(inputs)
    coder = _load_coder(checkpoint, device, threads, effort, ensemble, image_context)
    coder.activate()
    records = []
    for f in files:
        img = load_image(f)
        if img.planes is None:
            click.echo(f"vdmcodec: skipping {f}: mode {img.mode} is coded classically", err=True)
            continue
        with _progress(coder.step_model.T * img.width * img.height, f"eval {f.name}") as bar:
            rec = {"input": str(f), **evaluate_image(coder, img.planes, seed=seed, progress=bar.update), "effort": effort}
        records.append(rec)
        if as_json:
            click.echo(json.dumps(rec))
        else:
            t = rec["terms"]
            own = f", own side data {rec['side_bpd']:.4f}" if rec["side_bpd"] else ""
            click.echo(f"{f}: {rec['total_bpd']:.4f} bpd (recon {t['recon']:.4f}, prior {t['prior']:.4f}, "
                       f"diffusion {t['diffusion']:.4f}{own})")
    if records and not as_json:
        click.echo(f"mean over {len(records)} images: {mean_bpd(records):.4f} bpd "
                   f"({coder.step_model.T} of T={coder.plan[-1]} steps, {coder.step_model.network_calls()} network calls)")


# ------------------------------------------------------------------ train
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def train(ctx):
    """Train a model (see `vdmcodec train --help`)."""
    from .train import main as train_main

    ctx.exit(train_main(ctx.args))


if __name__ == "__main__":
    main()
