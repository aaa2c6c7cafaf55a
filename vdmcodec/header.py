"""A `.vdmc` header read as what the decoder must do (no torch, no PIL).

The container (container.py) checks that a header is well-formed JSON with valid sections;
this module turns its `model`, `coder` and `compute` fields into `DecodeSettings`: which
model, which arithmetic and threads, which steps with how many network calls.  Every
field written since format 1 is read here, with the meaning its absence had in the format
that introduced it (docs/FORMAT.md), and anything implausible is a CorruptFileError.

>>> s = decode_settings({"model": {"id": "m", "sha256": "ab"}, "coder": {"T": 2, "plan": [0, 1, 2]},
...                      "compute": {"device": "cpu", "threads": 2, "arith": "exact1", "z0_ensemble": 4}})
>>> s.exact, s.z0_ensemble, s.plan_for(2)
(True, 4, (0, 1, 2))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import CorruptFileError

ENSEMBLE_SIZES = (1, 2, 4, 8)  # network calls averaged over flips (model.network.ENSEMBLE_FLIPS; 8 from format 10)
ARITHMETICS = ("float", "exact1")
SHORT_HASH_HEX = 4  # an archive's per-image pixel hash: 16 bits name the image that fails
READ_SHORT_HASH_HEX = (4, 16)  # 64 bits in files before format 4, which still decode
ARCHIVE_HASH_SALT = b"vdmcodec-archive-pixels-v1"


@dataclass(frozen=True)
class DecodeSettings:
    """What a file's header says the decoder must reproduce."""

    model_id: str
    model_sha256: str
    device: str  # "cpu" or "cuda": where the writer ran its networks
    exact: bool  # exact arithmetic (any machine, any thread count) or float
    threads: int  # the writer's thread count (what a float file must decode with)
    plan: tuple[int, ...] | None  # gamma-table indices the chain visits; None: every step
    T: int | None  # steps of the plan as the header states them
    ensemble: int
    ensemble_steps: int | None  # None: every step
    z0_ensemble: int
    context_rows: int
    context_packing: str = "int8"  # how the images' context sections are written (coding.adapt)

    def plan_for(self, model_T: int) -> tuple[int, ...]:
        """The step plan checked against the model's T (its gamma table has T + 1 entries)."""
        try:
            plan = check_plan(range(model_T + 1) if self.plan is None else self.plan, model_T)
        except ValueError:
            raise CorruptFileError(f"step plan in header does not fit the model's {model_T} steps") from None
        if self.T is not None and self.T != len(plan) - 1:
            raise CorruptFileError("the header's step count does not match its step plan")
        if self.ensemble_steps is not None and self.ensemble_steps > len(plan) - 1:
            raise CorruptFileError(f"implausible ensemble_steps {self.ensemble_steps} in header")
        return plan


def check_plan(plan, T: int) -> tuple[int, ...]:
    """A step plan: the model's gamma-table indices the chain visits, 0 = j_0 < j_1 < ... <
    j_n = T.  ValueError if it is not one."""
    plan = tuple(int(j) for j in plan)
    if len(plan) < 2 or plan[0] != 0 or plan[-1] != T or any(b <= a for a, b in zip(plan, plan[1:])):
        raise ValueError(f"a step plan runs strictly upwards from 0 to T = {T}, not {list(plan)[:8]}...")
    return plan


def decode_settings(header: dict) -> DecodeSettings:
    """The decode settings of a header that names a model (one with bits-back images)."""
    try:
        model, coder, comp = header["model"], header.get("coder", {}), header["compute"]
        plan = coder.get("plan")
        settings = DecodeSettings(
            model_id=str(model.get("id", "?")), model_sha256=str(model["sha256"]), device=str(comp["device"]),
            exact=_arith(comp.get("arith", "float")) == "exact1", threads=int(comp["threads"]),
            plan=None if plan is None else tuple(int(j) for j in plan),
            T=None if coder.get("T") is None else int(coder["T"]),
            ensemble=_ensemble(comp.get("ensemble", 1), "network"),
            ensemble_steps=None if comp.get("ensemble_steps") is None else int(comp["ensemble_steps"]),
            z0_ensemble=_ensemble(comp.get("z0_ensemble", 1), "z0"),
            context_rows=int(coder.get("context_rows", 0)),
            context_packing=str(coder.get("context_packing", "int8")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"header fields are inconsistent ({type(exc).__name__}: {exc})") from None
    if settings.device not in ("cpu", "cuda"):
        raise CorruptFileError(f"unknown device {settings.device!r} in header")
    if not 1 <= settings.threads <= 1024:
        raise CorruptFileError(f"implausible thread count {settings.threads} in header")
    if settings.plan is not None and len(settings.plan) < 2:
        raise CorruptFileError("step plan in header is too short")
    if settings.ensemble_steps is not None and settings.ensemble_steps < 0:
        raise CorruptFileError(f"implausible ensemble_steps {settings.ensemble_steps} in header")
    if not 0 <= settings.context_rows <= 64:
        raise CorruptFileError(f"implausible context_rows {settings.context_rows} in header")
    if settings.context_packing not in CONTEXT_PACKINGS:
        raise CorruptFileError(f"unknown context packing {settings.context_packing!r} in header")
    return settings


CONTEXT_PACKINGS = ("int8", "rice")  # how images' context sections are written (coding.adapt.pack_deltas)


def _arith(value) -> str:
    if value not in ARITHMETICS:
        raise CorruptFileError(f"unknown arithmetic {value!r} in header")
    return value


def _ensemble(value, what: str) -> int:
    if value not in ENSEMBLE_SIZES:
        raise CorruptFileError(f"unknown {what} ensemble size {value} in header")
    return int(value)


# samples per pixel of each image mode a file stores (P and 1 as one plane of indices)
SAMPLES_PER_PIXEL = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}


def entry_dims(entry: dict) -> int:
    """An image entry's dimensions (pixels x samples per pixel): the bpd denominator."""
    return int(entry.get("width", 0)) * int(entry.get("height", 0)) * SAMPLES_PER_PIXEL.get(entry.get("mode"), 1)


def file_rate(header: dict, size: int) -> dict:
    """A file's size as a rate over all its images (`vdmcodec info`).

    >>> file_rate({"images": [{"width": 4, "height": 2, "mode": "RGB"}]}, 12)
    {'bytes': 12, 'dims': 24, 'bpd': 4.0}
    """
    dims = sum(entry_dims(e) for e in header.get("images", []))
    return {"bytes": size, "dims": dims, "bpd": 8 * size / dims if dims else None}


def writer_setup(header: dict) -> str:
    """The writer's compute setup in words (for the message when a file does not decode)."""
    w = header.get("compute", {}) if isinstance(header.get("compute"), dict) else {}
    return f"written with torch {w.get('torch', '?')}, {w.get('cpu_capability', '?')} kernels, {w.get('threads', '?')} threads"


def archive_pixel_sha256(digests: list[bytes]) -> str:
    """One SHA-256 over every image's pixel hash, in archive order."""
    h = hashlib.sha256(ARCHIVE_HASH_SALT)
    for d in digests:
        h.update(d)
    return h.hexdigest()


def short_pixel_hashes(header: dict, digests: list[bytes]) -> None:
    """In an archive, a full per-image hash costs 32 incompressible bytes per image (0.1 bpd
    on 32x32 images): keep SHORT_HASH_HEX digits of each, to name the image that fails, and
    protect the whole archive with one full SHA-256."""
    header["pixels_sha256"] = archive_pixel_sha256(digests)
    for entry, d in zip(header["images"], digests):
        del entry["pixel_sha256"]
        entry["pixel_sha256_short"] = d.hex()[:SHORT_HASH_HEX]


def pixel_hash_matches(entry: dict, digest: bytes) -> bool:
    """Whether an image's pixel digest matches its header entry (full or short hash)."""
    if "pixel_sha256" in entry:
        return digest.hex() == entry["pixel_sha256"]
    want = entry.get("pixel_sha256_short")
    if not isinstance(want, str) or len(want) not in READ_SHORT_HASH_HEX:
        raise CorruptFileError(f"{entry.get('name', '?')}: malformed pixel hash")
    return digest.hex()[: len(want)] == want
