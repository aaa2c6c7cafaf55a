"""Folders on Ray: the same batch as vdmcodec.batch, spread over a Ray cluster's CPUs.

``pip install vdmcodec[ray]``; then ``vdmcodec compress DIR -o OUT -r --ray`` starts a
local Ray on this machine, and ``--ray ADDRESS`` joins a running cluster (workers must see
DIR and OUT at the same paths: a shared file system).  Ray Data reads each file's raw
bytes (``read_binary_files``: never ``read_images``, which would convert the pixels); a
callable class per worker loads the model once and, for each file, compresses it, decodes
it back and writes the output atomically, exactly as the local path does
(``batch.compress_file``).  Until files are portable across CPUs, each file is verified on
the worker that wrote it, and every record names that worker's machine and CPU kernels so
the summary can say which machines' files need that machine type.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
from pathlib import Path
from typing import Callable

from .batch import FileResult, check_folders, compress_file, plan_compress
from .errors import UsageError, VdmcError

LOCAL = "local"  # --ray without an address: a Ray started on this machine


class CompressWorker:
    """One Ray Data worker: the model loaded once, then one file per call."""

    def __init__(self, outputs: dict[str, str], checkpoint: str | None, effort: str, threads: int,
                 force: bool, verify: bool, max_pixels: int | None):
        import torch

        from .checkpoints import load_checkpoint
        from .codec import Coder

        self.coder = Coder.for_effort(load_checkpoint(checkpoint), effort, threads=threads)
        self.outputs, self.force, self.verify, self.max_pixels = outputs, force, verify, max_pixels
        self.machine = {"host": socket.gethostname(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "torch": torch.__version__, "threads": threads}

    def __call__(self, batch: dict) -> dict:
        out = []
        for path, data in zip(batch["path"], batch["bytes"]):
            inp, target = Path(path), Path(self.outputs[_key(path)])
            try:
                res = compress_file(inp, target, self.coder, force=self.force, verify=self.verify,
                                    max_pixels=self.max_pixels, data=bytes(data))
            except VdmcError as exc:
                res = FileResult(inp, target, "failed", str(exc), exc.exit_code)
            except OSError as exc:
                res = FileResult(inp, target, "failed", f"{exc.strerror or exc}", 7)
            res.record = dict(res.record, machine=self.machine)
            out.append(json.dumps(dict(res.as_json(), notes=res.notes)))
        return {"result": out}


def _key(path: str) -> str:
    """Ray may hand paths back with a scheme or normalised: match on the absolute path."""
    return os.path.abspath(path.split("://", 1)[-1])


def compress_tree_ray(src, dst, *, address: str | None = LOCAL, checkpoint: str | None = None,
                      effort: str = "default", threads: int = 1, workers: int | None = None, force: bool = False,
                      verify: bool = True, max_pixels: int | None = None,
                      on_result: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """batch.compress_tree on Ray: `workers` actors (default: the cluster's CPUs over
    `threads`), each with `threads` coding threads; results in path order."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'vdmcodec[ray]'") from None
    src, dst = Path(src).resolve(), Path(dst).resolve()
    check_folders(src, dst)
    pairs, left_out = plan_compress(src, dst)
    for r in left_out:
        if on_result is not None:
            on_result(r)
    results = list(left_out)
    if pairs:
        if not ray.is_initialized():
            ray.init(address=None if address in (None, LOCAL) else address, log_to_driver=False,
                     include_dashboard=False, logging_level="ERROR")
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress reports would flood stderr
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(len(pairs), workers or max(1, cpus // max(1, threads))))
        outputs = {_key(str(i)): str(o) for i, o in pairs}
        # reading is light: it must not wait for CPUs the coding workers hold
        light = ({"num_cpus": 0} if "num_cpus" in inspect.signature(ray.data.read_binary_files).parameters
                 else {"ray_remote_args": {"num_cpus": 0}})  # the named parameter came in later Rays
        ds = ray.data.read_binary_files([str(i) for i, _ in pairs], include_paths=True,
                                        override_num_blocks=len(pairs), **light)
        ds = ds.map_batches(CompressWorker, batch_size=1, concurrency=n, num_cpus=threads,
                            fn_constructor_kwargs={"outputs": outputs, "checkpoint": checkpoint, "effort": effort,
                                                   "threads": threads, "force": force, "verify": verify,
                                                   "max_pixels": max_pixels})
        for row in ds.iter_rows():
            res = _from_json(json.loads(row["result"]))
            results.append(res)
            if on_result is not None:
                on_result(res)
    return sorted(results, key=lambda r: str(r.input))


def _from_json(d: dict) -> FileResult:
    own = {"input", "output", "status", "error", "exit_code", "seconds", "notes"}
    return FileResult(Path(d["input"]), None if d["output"] is None else Path(d["output"]), d["status"], d["error"],
                      d["exit_code"], d["seconds"], {k: v for k, v in d.items() if k not in own}, d.get("notes", []))


def machines(results: list[FileResult]) -> dict[str, list[str]]:
    """The files each machine type wrote (host and CPU kernels): until files are portable,
    a file decodes bit-exactly where its kind of machine runs."""
    out: dict[str, list[str]] = {}
    for r in results:
        m = r.record.get("machine")
        if r.status == "compressed" and m:
            out.setdefault(f"{m['host']} ({m['cpu_capability']}, torch {m['torch']})", []).append(str(r.output))
    return out
