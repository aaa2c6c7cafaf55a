"""Folders (--recursive): a tree of images through compress and decompress, resumed after
an interruption, with a non-image, a corrupt PNG and a nested folder; and the Python API."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vdmcodec.batch
from test_cli import assert_error, cli_models, invoke, json_lines, make_image, _cli_env  # noqa: F401 (fixtures)
from vdmcodec import batch


def test_docstring_examples_run():
    assert doctest.testmod(vdmcodec.batch, raise_on_error=True).attempted > 0


def make_tree(root: Path) -> Path:
    (root / "trip" / "day2").mkdir(parents=True)
    make_image("RGB", 12, 9, seed=1).save(root / "a.png")
    make_image("L", 7, 5, seed=2).save(root / "trip" / "b.png")
    make_image("RGBA", 6, 6, seed=3).save(root / "trip" / "day2" / "c.webp", lossless=True)
    (root / "trip" / "notes.txt").write_text("not an image")
    (root / "trip" / "broken.png").write_bytes((root / "a.png").read_bytes()[:40])
    return root


def pixels(path: Path) -> tuple:
    with Image.open(path) as im:
        return im.mode, np.asarray(im).tobytes()


def test_tree_round_trip_resume_and_failures(tmp_path):
    src, out, back = make_tree(tmp_path / "src"), tmp_path / "out", tmp_path / "back"
    r = invoke("compress", src, "-r", "-o", out, "--effort", "fast", "--json")
    assert r.exit_code == 14, (r.output, r.exception)
    recs = {Path(x["input"]).name: x for x in json_lines(r)}
    assert recs["notes.txt"]["status"] == "skipped" and recs["broken.png"]["status"] == "failed"
    assert recs["broken.png"]["exit_code"] == 4 and recs["a.png"]["status"] == "compressed"
    assert recs["a.png"]["bpd"] > 0 and "decode_seconds" in recs["a.png"]
    assert "broken.png" in r.stderr.splitlines()[-1] and "3 compressed" in r.stderr
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*.vdmc"))
    assert made == ["a.vdmc", "trip/b.vdmc", "trip/day2/c.vdmc"]

    # an interrupted run: one output missing, one half-written temp left behind
    (out / "trip" / "b.vdmc").unlink()
    stamp = (out / "a.vdmc").stat().st_mtime_ns
    (tmp_path / "src" / "trip" / "broken.png").unlink()
    r = invoke("compress", src, "-r", "-o", out, "--effort", "fast", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    status = {Path(x["input"]).name: x["status"] for x in json_lines(r)}
    assert status == {"a.png": "done", "b.png": "compressed", "c.webp": "done", "notes.txt": "skipped"}
    assert (out / "a.vdmc").stat().st_mtime_ns == stamp  # not recoded

    r = invoke("decompress", out, "-r", "-o", back)
    assert r.exit_code == 0, (r.output, r.exception)
    for name in ("a", "trip/b", "trip/day2/c"):
        orig = next(src.glob(name + ".*"))
        assert pixels(back / (name + ".png")) == pixels(orig), name
    r = invoke("decompress", out, "-r", "-o", back, "--json")  # again: all there already
    assert r.exit_code == 0 and {x["status"] for x in json_lines(r)} == {"done"}


def test_a_damaged_output_is_not_taken_for_a_finished_one(tmp_path):
    src, out = make_tree(tmp_path / "src"), tmp_path / "out"
    (src / "trip" / "broken.png").unlink()
    assert invoke("compress", src, "-r", "-o", out, "--effort", "fast").exit_code == 0
    data = bytearray((out / "a.vdmc").read_bytes())
    data[-1] ^= 1
    (out / "a.vdmc").write_bytes(bytes(data))
    r = invoke("compress", src, "-r", "-o", out, "--effort", "fast", "--json")
    assert r.exit_code == 14
    rec = next(x for x in json_lines(r) if x["input"].endswith("a.png"))
    assert rec["status"] == "failed" and rec["exit_code"] == 6 and "not a finished file" in rec["error"]
    r = invoke("compress", src, "-r", "-o", out, "--effort", "fast", "-f", "--json")
    assert r.exit_code == 0 and {x["status"] for x in json_lines(r)} == {"compressed", "skipped"}


def test_folder_arguments_need_recursive_and_an_output(tmp_path):
    src = make_tree(tmp_path / "src")
    assert_error(invoke("compress", src), 2, "--recursive")
    assert_error(invoke("compress", src, "-r"), 2, "-o OUTDIR")
    assert_error(invoke("compress", src, src / "a.png", "-r", "-o", tmp_path / "o"), 2, "one input folder")
    assert_error(invoke("compress", src, "-r", "-o", src), 2, "differ")
    assert_error(invoke("decompress", src), 2, "--recursive")


def test_python_api(tmp_path, cli_models):
    src = make_tree(tmp_path / "src")
    seen = []
    results = batch.compress_tree(src, tmp_path / "out", checkpoint=str(cli_models[0]), effort="fast", threads=1,
                                  on_result=seen.append)
    assert [r.input.name for r in results] == ["a.png", "b.png", "broken.png", "c.webp", "notes.txt"]  # path order
    assert len(seen) == len(results)
    by = {r.input.name: r for r in results}
    assert by["broken.png"].status == "failed" and by["c.webp"].status == "compressed"
    assert by["c.webp"].record["mode"] == "RGBA" and os.path.exists(by["c.webp"].output)
    assert batch.summary(results) == "3 compressed, 1 not images (left alone), 1 failed"


def test_tree_on_a_local_ray_cluster(tmp_path, cli_models):
    """The same tree through Ray Data on a local 2-CPU Ray: the same files, exact round trips,
    failures reported with their files, each record naming the worker's machine."""
    ray = pytest.importorskip("ray")
    from vdmcodec.batch import compress_file
    from vdmcodec.batch_ray import compress_tree_ray, machines
    from vdmcodec.checkpoints import load_checkpoint
    from vdmcodec.codec import Coder

    src, out, back = make_tree(tmp_path / "src"), tmp_path / "out", tmp_path / "back"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"VDMCODEC_THREADS": "1"}})
    try:
        (out / "trip").mkdir(parents=True)
        (out / "trip" / "b.vdmc").write_bytes(b"half a file")  # not a finished output: not kept
        compress_file(src / "a.png", out / "a.vdmc", Coder.for_effort(load_checkpoint(cli_models[0]), "fast", threads=1))
        stamp = (out / "a.vdmc").stat().st_mtime_ns
        results = compress_tree_ray(src, out, checkpoint=str(cli_models[0]), effort="fast", threads=1, workers=2,
                                    force=False)
    finally:
        ray.shutdown()
    by = {r.input.name: r for r in results}
    assert by["broken.png"].status == "failed" and by["broken.png"].exit_code == 4
    assert by["notes.txt"].status == "skipped"
    assert by["a.png"].status == "done" and (out / "a.vdmc").stat().st_mtime_ns == stamp  # resumed, not recoded
    assert by["b.png"].status == "failed" and by["b.png"].exit_code == 6  # the half file is reported, kept
    assert by["c.webp"].status == "compressed" and by["c.webp"].record["bpd"] > 0
    assert len(machines(results)) == 1 and by["c.webp"].record["machine"]["threads"] == 1
    assert "output" not in by["c.webp"].record and by["c.webp"].as_json()["output"] == str(out / "trip/day2/c.vdmc")
    (out / "trip" / "b.vdmc").unlink()
    compress_file(src / "trip" / "b.png", out / "trip" / "b.vdmc",
                  Coder.for_effort(load_checkpoint(cli_models[0]), "fast", threads=1))
    r = invoke("decompress", out, "-r", "-o", back)
    assert r.exit_code == 0, (r.output, r.exception)
    for name in ("a", "trip/b", "trip/day2/c"):
        assert pixels(back / (name + ".png")) == pixels(next(src.glob(name + ".*"))), name
