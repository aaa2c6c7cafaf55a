"""Summaries of result files for the README: eval means and the vdmcodec accounting.

    python -m benchmarks.summarize results/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def eval_summary(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return f"{path.name}: empty"
    dims = sum(r["dims"] for r in rows)
    mean = sum(r["nelbo_bpd"] * r["dims"] for r in rows) / dims
    terms = {k: sum(r["terms"][k] * r["dims"] for r in rows) / dims for k in rows[0]["terms"]}
    secs = sum(r["seconds"] for r in rows) / len(rows)
    t = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
    return f"{path.name}: {len(rows)} images, NELBO {mean:.3f} bpd ({t}), T={rows[0]['T']}, {secs:.1f} s per image"


def vdmc_summary(path: Path) -> str:
    data = json.loads(path.read_text())
    out = []
    for ds in data["datasets"]:
        per = [im["results"].get("vdmc") for im in ds["images"]]
        per = [v for v in per if v and v.get("status") == "ok"]
        if not per:
            continue
        n = len(per)

        def mean(key):
            vals = [v[key] for v in per if v.get(key) is not None]
            return sum(vals) / len(vals) if vals else float("nan")

        methods = {m: sum(1 for v in per if v["method"] == m) for m in {v["method"] for v in per}}
        out.append(
            f"{ds['name']} (n={n}): file {mean('bpd'):.3f} bpd, NELBO as coded {mean('nelbo_bpd'):.3f} bpd, "
            f"overhead {mean('overhead_bytes'):.0f} bytes/image, seed {mean('seed_bytes'):.0f} bytes/image, "
            f"encode {mean('encode_s'):.1f} s, decode {mean('decode_s'):.1f} s per image, methods {methods}, "
            f"exact round trips {sum(1 for v in per if v.get('roundtrip_ok', v.get('lossless')))}/{n}"
        )
        arch = ds.get("archive")
        if arch:
            out.append(f"{ds['name']} archive: {json.dumps({k: arch[k] for k in arch if not isinstance(arch[k], (list, dict))})}")
    return "\n".join(out)


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:] or ["results"])[0])
    for f in sorted(folder.glob("eval_*.jsonl")):
        print(eval_summary(f))
    for f in sorted(folder.glob("bench_*.json")):
        s = vdmc_summary(f)
        if s:
            print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
