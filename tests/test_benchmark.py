"""benchmarks.compare end to end: two tiny Kodak crops, every codec, a tiny untrained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
from data_paths import KODAK  # noqa: E402

KODIM01 = KODAK / "kodim01.png"

from benchmarks import classic, compare  # noqa: E402 (found through pytest's pythonpath = ".")

try:
    import imagecodecs  # noqa: F401

    HAVE_IMAGECODECS = True
except ImportError:
    HAVE_IMAGECODECS = False


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory):
    if not KODIM01.exists():
        pytest.skip(f"{KODIM01} is not there")
    root = tmp_path_factory.mktemp("bench")
    imgs = root / "crops"
    imgs.mkdir()
    with Image.open(KODIM01) as im:
        im.crop((300, 200, 312, 209)).save(imgs / "a_12x9.png")  # (left, top, right, bottom)
        im.crop((100, 100, 116, 116)).save(imgs / "b_16x16.png")
    (imgs / "notes.txt").write_text("not an image: must be ignored\n")

    import torch

    from vdmcodec.checkpoints import save_checkpoint
    from vdmcodec.model.network import NetConfig
    from vdmcodec.model.vdm import VDM, VDMConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VDM(VDMConfig(steps=4, net=NetConfig(channels=(4, 8, 8), down_blocks=(1, 1), up_blocks=1, emb_dim=16)))
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, model, "tiny", {})
    return imgs, ckpt


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def test_compare_all_codecs_end_to_end(bench_inputs, tmp_path, capsys):
    imgs, ckpt = bench_inputs
    out_json, out_md, out_png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    rc = compare.main([
        str(imgs), "--checkpoint", str(ckpt), "--device", "cpu", "--threads", "1",
        "--archive-small", "--eval-nelbo",
        "--json", str(out_json), "--markdown", str(out_md), "--plot", str(out_png),
    ])
    stdout = capsys.readouterr().out
    assert rc == 0

    data = json.loads(out_json.read_text())
    settings = data["settings"]
    assert settings["codecs"] == compare.ALL_CODECS
    assert settings["machine"]["cpu_model"] and settings["machine"]["cpu_count"] >= 1
    for pkg in ("vdmcodec", "torch", "numpy", "constriction", "pillow", "imagecodecs"):
        assert pkg in settings["versions"]
    from vdmcodec.checkpoints import file_sha256

    assert settings["checkpoint"]["sha256"] == file_sha256(ckpt)
    assert settings["checkpoint"]["model_id"] == "tiny" and settings["checkpoint"]["T"] == 4
    assert settings["torch_threads"] == 1

    # every codec that should be there is there, and usable
    expected_available = {"png", "webp", "vdmc"} | (set(classic.CODECS) if HAVE_IMAGECODECS else set())
    for key in compare.ALL_CODECS:
        info = data["codecs"][key]
        if key in expected_available:
            assert info["available"], (key, info)

    (ds,) = data["datasets"]
    assert [im["name"] for im in ds["images"]] == ["a_12x9.png", "b_16x16.png"]
    assert data["failures"] == []
    for im in ds["images"]:
        assert im["dims"] == im["width"] * im["height"] * 3
        assert (im["width"], im["height"]) in {(12, 9), (16, 16)}
        for key in compare.ALL_CODECS:
            if not data["codecs"][key]["available"]:
                assert im["results"][key]["status"] == "unavailable"
                continue
            r = im["results"][key]
            assert r["status"] == "ok" and r["lossless"] is True, (key, r)
            assert r["bytes"] > 0 and r["bpd"] > 0
            assert _close(r["bpd"], 8.0 * r["bytes"] / im["dims"])
            assert r["encode_s"] >= 0 and r["decode_s"] >= 0 and r["peak_rss_mb"] > 0
            assert _close(r["encode_s_per_mp"], r["encode_s"] / im["megapixels"])

        v = im["results"]["vdmc"]
        assert v["verify_s"] > 0 and _close(v["compress_with_verify_s"], v["encode_s"] + v["verify_s"])
        assert v["method"] in ("bitsback", "classic")
        # the seconds spent only on the seed rows' NELBO for the report are not encoding
        assert v["reporting_s"] >= 0 and (v["reporting_s"] > 0 or not (v["method"] == "bitsback" and v["seed_bytes"]))
        assert (v["regions"] >= 1) == (v["method"] == "bitsback") and v["report_dims"] == im["dims"]
        assert v["nelbo_bits"] > 0 and _close(v["nelbo_bpd"], v["nelbo_bits"] / im["dims"])
        assert _close(v["overhead_bpd"], v["bpd"] - v["nelbo_bpd"])
        assert _close(v["overhead_bytes"], v["bytes"] - v["nelbo_bits"] / 8)
        assert v["container"]["header_bytes"] + sum(v["container"]["section_bytes"].values()) == v["bytes"]
        assert v["eval"]["nelbo_bpd"] > 0 and v["eval"]["dims"] == im["dims"]

    # the whole set as one archive
    a = ds["archive"]
    assert a["status"] == "ok" and a["lossless"] is True
    assert a["images"] == 2 and a["dims"] == sum(im["dims"] for im in ds["images"])
    assert _close(a["bpd"], 8.0 * a["bytes"] / a["dims"])
    assert a["methods"] == {"bitsback": 2}  # an archive never falls back per image
    assert _close(a["overhead_bpd"], a["bpd"] - a["nelbo_bpd"])

    # per-data-set means agree with the per-image numbers
    for key in compare.ALL_CODECS:
        s = ds["summary"][key]
        if not data["codecs"][key]["available"]:
            assert s["ok"] == 0
            continue
        per = [im["results"][key] for im in ds["images"]]
        assert s["ok"] == 2 and s["complete"]
        assert _close(s["bpd_mean"], float(np.mean([r["bpd"] for r in per])))
        assert _close(s["bpd_total"], 8.0 * sum(r["bytes"] for r in per) / sum(im["dims"] for im in ds["images"]))

    md = out_md.read_text()
    assert md.startswith("Command: `python -m benchmarks.compare ")
    assert "| Codec |" in md and "crops (n=2) bpd" in md
    for key in compare.ALL_CODECS:
        assert compare.codec_label(key) in md
    assert "whole set as one archive" in md and "model NELBO" in md
    assert md in stdout  # the table also goes to stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classic_codecs_round_trip_all_channel_counts():
    rng = np.random.default_rng(1)
    avail = classic.available_codecs()
    for channels in (1, 2, 3, 4):
        a = rng.integers(0, 256, (7, 11, channels), dtype=np.uint8)
        for key in classic.CODECS:
            if avail[key] is not None:
                continue
            if key == "jpegls" and channels == 2:
                with pytest.raises(classic.UnsupportedInputError):
                    classic.run_codec(key, a, threads=1)
                continue
            run = classic.run_codec(key, a, threads=1)  # raises NotLosslessError if not exact
            assert isinstance(run.data, bytes) and len(run.data) > 0
            assert run.encode_s >= 0 and run.decode_s >= 0


def test_lossy_result_is_a_failure(bench_inputs, tmp_path, monkeypatch, capsys):
    imgs, _ = bench_inputs

    def lossy(pixels):
        a = classic.as_hwc(pixels)
        bad = a.copy()
        bad[0, 0, 0] ^= 1
        classic.check_lossless("lossy", a, bad)

    monkeypatch.setitem(classic.CODECS, "png", classic.ClassicCodec("png", "PNG", lossy, "pillow"))
    out_json = tmp_path / "r.json"
    rc = compare.main([str(imgs), "--no-vdmc", "--codecs", "png,webp", "--json", str(out_json), "--no-progress"])
    capsys.readouterr()
    assert rc == 1
    data = json.loads(out_json.read_text())
    res = [im["results"]["png"] for im in data["datasets"][0]["images"]]
    assert all(r["status"] == "failed" and r["lossless"] is False and "differ" in r["error"] for r in res)
    assert all(im["results"]["webp"]["lossless"] is True for im in data["datasets"][0]["images"])
    assert len(data["failures"]) == 2


def test_no_vdmc_does_not_import_torch(bench_inputs, tmp_path):
    imgs, _ = bench_inputs
    code = (
        "import sys; from benchmarks import compare; "
        f"rc = compare.main([{str(imgs)!r}, '--no-vdmc', '--codecs', 'png,jpegls', '--no-progress']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "PNG (Pillow, optimize)" in p.stdout


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main([str(tmp_path), "--codecs", "gif"])
    assert exc.value.code == 2
    assert compare.main([str(tmp_path), "--no-vdmc", "--no-progress"]) == 2  # no images there
    assert "no readable images" in capsys.readouterr().err


def test_missing_imagecodecs_is_recorded_as_unavailable(bench_inputs, tmp_path, monkeypatch, capsys):
    imgs, _ = bench_inputs
    monkeypatch.setattr(classic, "imagecodecs", None)
    out_json = tmp_path / "r.json"
    rc = compare.main([str(imgs), "--no-vdmc", "--codecs", "png,jxl-e7,jpegls", "--limit", "1",
                       "--json", str(out_json), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["codecs"]["png"]["available"] is True
    for key in ("jxl-e7", "jpegls"):
        assert data["codecs"][key]["available"] is False and "imagecodecs" in data["codecs"][key]["reason"]
        (im,) = data["datasets"][0]["images"]
        assert im["results"][key]["status"] == "unavailable"
    assert "| JPEG XL lossless (e7) | unavailable |" in out


def test_compare_runs_as_a_module(bench_inputs, tmp_path):
    """`python -m benchmarks.compare`, the way release.sh calls it (not just main() in-process):
    code placed after the __main__ block would be missing there."""
    imgs, ckpt = bench_inputs
    out_json = tmp_path / "m.json"
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", str(imgs), "--checkpoint", str(ckpt), "--device", "cpu",
         "--threads", "1", "--codecs", "png,vdmc", "--no-progress", "--json", str(out_json)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(out_json.read_text())
    assert Path(data["settings"]["checkpoint"]["path"]).name == ckpt.name
    assert not data["failures"]


def test_every_coder_call_costs_its_ideal_bits(tiny_checkpoint, tmp_path, capsys):
    """Measured to the bit (num_valid_bits), each kind of call in a region's chain grows the
    stack by its ideal code length to within a thousandth of a bit per symbol, except that
    the coder caps the cost of a latent far in P's tail at its precision (a saving)."""
    from benchmarks.overhead import main as overhead_main
    from helpers import kodak_array

    path = tmp_path / "k.png"
    # a photograph: on synthetic flat areas latents far in P's tail save more than the
    # accounting of the cap explains (a known gap, docs/RESULTS.md session 6)
    Image.fromarray(kodak_array(3, real=True)[:40, :48]).save(path)
    assert overhead_main([str(path), "--box", "4", "8", "24", "32", "--checkpoint", str(tiny_checkpoint),
                          "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    calls = out["calls"]
    assert set(calls) == {"q_z0_pop", "x_push", "q_pop", "p_push"}
    for kind, c in calls.items():
        assert c["count"] > 0 and c["overhead_bits"] < 1e-3 * c["count"], (kind, c)
        assert c["overhead_bits"] + c["beyond_precision_excess_bits"] > -1e-3 * c["count"], (kind, c)
    assert calls["q_pop"]["beyond_precision"] == 0  # Q's own draws are never that improbable
    assert out["region_overhead_bits"] < 1e-3 * out["dims"] * 8


def test_large_image_mosaic_tiles_the_photographs_to_about_the_size_asked(tmp_path):
    from benchmarks.large_image import TILE, mosaic
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (TILE[1] + 10, TILE[0] + 20, 3), dtype=np.uint8) for _ in range(2)]
    for k, t in enumerate(tiles):
        Image.fromarray(t).save(tmp_path / f"p{k}.png")
    Image.fromarray(tiles[0][:100, :100]).save(tmp_path / "small.png")  # too small: left out
    m = mosaic(tmp_path, 12)
    n = (m.shape[0] // TILE[1]) * (m.shape[1] // TILE[0])
    assert m.shape[0] % TILE[1] == 0 and m.shape[1] % TILE[0] == 0 and abs(n * TILE[0] * TILE[1] / 12e6 - 1) < 0.15
    assert np.array_equal(m[:TILE[1], :TILE[0]], tiles[0][5:5 + TILE[1], 10:10 + TILE[0]])  # centre crops, in name order
    assert np.array_equal(m[:TILE[1], TILE[0]:2 * TILE[0]], tiles[1][5:5 + TILE[1], 10:10 + TILE[0]])
