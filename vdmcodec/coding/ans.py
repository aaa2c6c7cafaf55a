"""A small codec layer in craystack's spirit on top of constriction's AnsCoder.

A codec is a (push, pop) pair acting on an `AnsStack`; every push sits beside its pop.  Each
call codes a whole array with one vectorised constriction call.  Parameters are validated
here because the Rust core panics (uncatchably) on a non-positive or NaN std.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import constriction
import numpy as np


def _installed_version(dist: str) -> str:
    """The version actually installed (what the header records), not the one we pinned."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return getattr(constriction, "__version__", "unknown")


ANS_NAME = "constriction"
ANS_VERSION = _installed_version("constriction")  # pinned in pyproject.toml; exact decoding depends on it
PRECISION_BITS = 24


class CoderInputError(ValueError):
    """Parameters that constriction would panic on."""


@lru_cache(maxsize=None)
def _gaussian_family(lo: int, hi: int):
    return constriction.stream.model.QuantizedGaussian(lo, hi)


@lru_cache(maxsize=None)
def _uniform_family(size: int):
    return constriction.stream.model.Uniform(size)


def _categorical_family():
    return constriction.stream.model.Categorical(perfect=False)


class AnsStack:
    """The bit stack.  `words` are uint32 words from `get_compressed()` of an earlier stack."""

    def __init__(self, words: np.ndarray | None = None):
        if words is None:
            self._coder = constriction.stream.stack.AnsCoder()
        else:
            self._coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))

    def num_bits(self) -> int:
        return int(self._coder.num_bits())

    def num_valid_bits(self) -> int:
        """Like num_bits, but to the bit: the head's leading zeros are not counted (for
        measuring single calls; num_bits moves in whole words)."""
        return int(self._coder.num_valid_bits())

    def words(self) -> np.ndarray:
        return np.asarray(self._coder.get_compressed(), dtype=np.uint32).copy()

    def restore(self, saved: "AnsStack") -> None:
        """Become `saved` (a clone taken earlier), undoing everything since."""
        self._coder = saved._coder.clone()

    def clone(self) -> "AnsStack":
        new = AnsStack.__new__(AnsStack)
        new._coder = self._coder.clone()
        return new

    # --- quantised Gaussians on a symbol window [-half, half] around integer centres ---
    def push_gaussian(self, rel: np.ndarray, frac: np.ndarray, std: np.ndarray, half: int) -> None:
        _check_gaussian(frac, std)
        rel = np.ascontiguousarray(rel, dtype=np.int32)
        if rel.size and (rel.min() < -half or rel.max() > half):
            raise CoderInputError("symbol outside its coding window")
        self._coder.encode_reverse(rel, _gaussian_family(-half, half), frac, std)

    def pop_gaussian(self, frac: np.ndarray, std: np.ndarray, half: int) -> np.ndarray:
        _check_gaussian(frac, std)
        return np.asarray(self._coder.decode(_gaussian_family(-half, half), frac, std), dtype=np.int32)

    # --- categorical tables of shape (N, K) ---
    def push_categorical(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        probs = _check_probs(probs)
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        if symbols.size and (symbols.min() < 0 or symbols.max() >= probs.shape[1]):
            raise CoderInputError("symbol outside its table")
        self._coder.encode_reverse(symbols, _categorical_family(), probs)

    def pop_categorical(self, probs: np.ndarray) -> np.ndarray:
        probs = _check_probs(probs)
        return np.asarray(self._coder.decode(_categorical_family(), probs), dtype=np.int32)

    # --- raw bytes, exactly 8 bits each ---
    def push_bytes(self, data: bytes) -> None:
        if data:
            self._coder.encode_reverse(np.frombuffer(data, dtype=np.uint8).astype(np.int32), _uniform_family(256))

    def pop_bytes(self, n: int) -> bytes:
        if n == 0:
            return b""
        return np.asarray(self._coder.decode(_uniform_family(256), n), dtype=np.int32).astype(np.uint8).tobytes()


def _check_gaussian(frac: np.ndarray, std: np.ndarray) -> None:
    if frac.dtype != np.float64 or std.dtype != np.float64:
        raise CoderInputError("Gaussian parameters must be float64")
    if not (np.all(np.isfinite(frac)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise CoderInputError("non-finite mean or non-positive std")
    if not (frac.flags.c_contiguous and std.flags.c_contiguous):
        raise CoderInputError("parameters must be C-contiguous")


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.ascontiguousarray(probs, dtype=np.float64)
    if probs.ndim != 2 or not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs.sum(1) <= 0):
        raise CoderInputError("probability tables must be finite, non-negative and non-empty")
    return probs


@dataclass(frozen=True)
class Codec:
    """push(stack, symbols) and pop(stack) -> symbols, as in craystack."""

    push: Callable[[AnsStack, np.ndarray], None]
    pop: Callable[[AnsStack], np.ndarray]


def windowed_gaussian(mean: np.ndarray, std: np.ndarray, half: int) -> Codec:
    """Gaussian N(mean, std) (both in grid units) on integers within +-half of round(mean).

    Symbols are absolute grid indices (int32); only the window relative to the rounded mean
    is coded, so the symbol range is small and latents stay inside it by construction.
    """
    centre = np.rint(mean)
    frac = np.ascontiguousarray(mean - centre)
    std = np.ascontiguousarray(std, dtype=np.float64)
    centre_i = centre.astype(np.int64)

    def push(stack: AnsStack, symbols: np.ndarray) -> None:
        stack.push_gaussian((symbols.astype(np.int64) - centre_i).astype(np.int32), frac, std, half)

    def pop(stack: AnsStack) -> np.ndarray:
        return (stack.pop_gaussian(frac, std, half).astype(np.int64) + centre_i).astype(np.int32)

    return Codec(push, pop)


def categorical(probs: np.ndarray, offset: np.ndarray) -> Codec:
    """Table codec: symbol s has probability probs[n, s - offset[n]]."""
    offset = offset.astype(np.int32)

    def push(stack: AnsStack, symbols: np.ndarray) -> None:
        stack.push_categorical(symbols.astype(np.int32) - offset, probs)

    def pop(stack: AnsStack) -> np.ndarray:
        return stack.pop_categorical(probs) + offset

    return Codec(push, pop)
