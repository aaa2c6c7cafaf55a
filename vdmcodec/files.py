"""Files: reading a user's input, writing outputs atomically, checking the place first.

No PIL, numpy or torch here: the container (and so ``vdmcodec info``), the checkpoints and
the image reader all share these.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from vdmcodec.errors import InputNotFoundError, OutputExistsError, OutputNotWritableError

# the suffixes read as images (folders, training data, and names compress must not write to)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".gif"}


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open a user-named input file, turning OS errors into messages that name the path."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path} is a folder, expected a file") from None
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool) -> None:
    """Write all-or-nothing: readers never see a half-written file, an interrupted run
    never leaves a damaged output, and without overwrite an existing file is never
    touched (hard-linking the finished temp file fails atomically if the name exists)."""
    path = Path(path)
    folder = path.parent
    tmp = _write_temp(folder, path.name, data, path)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        _remove_quietly(tmp)
    _fsync_folder(folder)


def check_writable(path: str | os.PathLike, *, folder_may_be_made: bool = False) -> None:
    """Fail now, before minutes of coding, if path's folder cannot take a new file: a
    temporary file is created there and removed (the final write checks again)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    while folder_may_be_made and not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing folder must take the new folder
    _remove_quietly(_write_temp(folder, path.name, b"", path))


def check_room(folder: str | os.PathLike, nbytes: int) -> None:
    """Fail before coding when folder's file system has fewer than nbytes free (callers pass
    the raw pixel size: a .vdmc file stays below it)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no figure to go by: the atomic write still reports a full disk
    if free < nbytes:
        raise OutputNotWritableError(f"not enough room in {folder}: {free:,} bytes free, up to {nbytes:,} needed")


def _write_temp(folder: Path, name: str, data: bytes, target: Path) -> Path:
    """Create a fresh temp file next to the target (same file system, so the final rename
    or link is atomic). os.open with mode 0o666 honours the umask, unlike mkstemp's 0o600."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except FileNotFoundError:
            why = "does not exist" if not folder.is_dir() else "does not accept new files"
            raise OutputNotWritableError(f"cannot write {target}: folder {folder} {why}") from None
        except OSError as exc:
            raise OutputNotWritableError(f"cannot write {target}: {exc.strerror or exc}") from None
    else:
        raise OutputNotWritableError(f"cannot write {target}: no free temporary file name in {folder}")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputNotWritableError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _link_exclusive(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists (use -f to overwrite)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    # File systems without hard links (FAT, some network shares): claim the name with
    # O_EXCL, then move the finished file over the empty placeholder.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists (use -f to overwrite)") from None
    try:
        os.replace(tmp, path)
    except OSError:
        _remove_quietly(path)  # our own empty placeholder
        raise


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or nothing better to do: the original error matters more


def _fsync_folder(folder: Path) -> None:
    """Make the new directory entry durable; best effort, not all platforms allow it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
