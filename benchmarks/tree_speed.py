"""Images per minute for a folder tree: the local path against the Ray path, same tree.

    python -m benchmarks.tree_speed ../shared/data/cifar10-test-200 --limit 40 \\
        --json results/tree_speed.json

Copies the first --limit images into a two-level tree, compresses it with
`vdmcodec compress -r` (local, --threads N) and with `--ray` (a local Ray, --workers W with
--threads 1 each), each into an empty folder, and records wall seconds, images per minute
and the summed file sizes (they must agree).  Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_tree(src: Path, dst: Path, limit: int) -> list[Path]:
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png")[:limit]
    out = []
    for i, f in enumerate(files):
        target = dst / f"part{i % 3}" / f"sub{i % 2}" / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(target)
    return out


def run(args: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "vdmcodec", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stderr[-2000:]}")
    return wall, r.returncode


def total_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.vdmc"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2, help="local path: coding threads")
    ap.add_argument("--workers", type=int, default=2, help="Ray path: workers, one thread each")
    ap.add_argument("--effort", default="default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tree_speed_"))
    try:
        files = make_tree(Path(args.src), work / "in", args.limit)
        common = ["--effort", args.effort]
        local_s, _ = run(["compress", str(work / "in"), "-r", "-o", str(work / "local"), "--threads", str(args.threads), *common])
        ray_s, _ = run(["compress", str(work / "in"), "-r", "-o", str(work / "ray"), "--ray", "--threads", "1",
                        "--workers", str(args.workers), *common])
        rec = {
            "command": "python -m benchmarks.tree_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
            "images": len(files), "src": args.src, "effort": args.effort,
            "local": {"threads": args.threads, "seconds": local_s, "images_per_minute": 60 * len(files) / local_s,
                      "bytes": total_bytes(work / "local")},
            "ray": {"workers": args.workers, "threads_per_worker": 1, "seconds": ray_s,
                    "images_per_minute": 60 * len(files) / ray_s, "bytes": total_bytes(work / "ray")},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rec, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
