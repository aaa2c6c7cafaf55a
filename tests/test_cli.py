"""The `vdmcodec` command line, end to end through click's CliRunner, on a tiny untrained model.

The model is found the way users find it: through VDMCODEC_CHECKPOINT (no --checkpoint),
except where a test is about --checkpoint itself.  What is checked: exact round trips for
every supported mode and odd sizes, the --json records the README promises, folders and
archives, `info`, `eval`, every user error with its exit code and a single
`vdmcodec: error:` line, atomic writes, and --version.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vdmcodec
from vdmcodec.checkpoints import save_checkpoint
from vdmcodec.cli import main
from vdmcodec.model.network import NetConfig
from vdmcodec.model.vdm import VDM, VDMConfig

from data_paths import KODAK  # noqa: E402

KODAK23 = KODAK / "kodim23.png"
MODES = ["L", "LA", "RGB", "RGBA", "P", "P-trns", "P-trns1", "1"]
SIZES = [(1, 1), (17, 5), (33, 65)]  # (width, height)
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}


# ----------------------------------------------------------------------------- fixtures


def _tiny_model(seed: int) -> VDM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VDM(VDMConfig(steps=4, net=NetConfig(channels=(4, 8, 8), down_blocks=(1, 1), up_blocks=1, emb_dim=16)))


@pytest.fixture(scope="session")
def cli_models(tmp_path_factory):
    """Two different tiny checkpoints: A (the default through the env var) and B."""
    d = tmp_path_factory.mktemp("cli_models")
    a, b = d / "model_a.pt", d / "model_b.pt"
    save_checkpoint(a, _tiny_model(0), "tiny-a", {})
    save_checkpoint(b, _tiny_model(1), "tiny-b", {})
    return a, b


@pytest.fixture(autouse=True)
def _cli_env(cli_models, monkeypatch):
    monkeypatch.setenv("VDMCODEC_CHECKPOINT", str(cli_models[0]))
    monkeypatch.setenv("VDMCODEC_THREADS", "1")  # a training job shares the two cores


def make_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A noisy Pillow image of a (pseudo) mode; P-trns has a per-entry tRNS table,
    P-trns1 a single transparent index."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(rgb[:, :, 0], "L")
    if mode == "LA":
        return Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA")
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if mode.startswith("P"):
        im = Image.fromarray(rgb, "RGB").quantize(colors=16)
        if mode == "P-trns":
            im.info["transparency"] = bytes(range(0, 256, 16))[: len(im.getpalette()) // 3]
        elif mode == "P-trns1":
            im.info["transparency"] = int(np.asarray(im)[0, 0])
        return im
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    raise AssertionError(mode)


def write_image(path: Path, mode: str, width: int, height: int, seed: int = 0) -> Path:
    im = make_image(mode, width, height, seed)
    im.save(path)
    with Image.open(path) as back:  # the test is only meaningful if the file holds that mode
        assert back.mode == mode.split("-")[0] and back.size == (width, height)
    return path


def kodak_crop(path: Path) -> Path:
    if not KODAK23.exists():
        pytest.skip(f"{KODAK23} not available")
    with Image.open(KODAK23) as im:
        im.convert("RGB").crop((300, 200, 340, 224)).save(path)  # 40x24
    return path


def image_content(path: Path) -> dict:
    """Everything that must survive a lossless round trip."""
    with Image.open(path) as im:
        im.load()
        out = {"mode": im.mode, "size": im.size, "pixels": np.asarray(im).copy(),
               "transparency": im.info.get("transparency"), "icc": im.info.get("icc_profile")}
        if im.mode == "P":
            out["palette"] = bytes(im.getpalette())
            out["rgba"] = np.asarray(im.convert("RGBA")).copy()
    return out


def assert_same_content(original: Path, decoded: Path) -> None:
    a, b = image_content(original), image_content(decoded)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def invoke(*args: str | Path):
    """Run the CLI in-process; stdout and stderr are kept apart (click >= 8.2 does that by
    default; older versions need mix_stderr=False)."""
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def json_lines(result) -> list[dict]:
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit code `code`, nothing on stdout, exactly one `vdmcodec: error:` line on stderr."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vdmcodec: error: "), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def header_of(path: Path) -> dict:
    r = ok(invoke("info", "--json", path))
    return json_lines(r)[0]["header"]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", MODES)
def test_roundtrip_every_mode_and_odd_sizes(tmp_path, mode):
    """Each mode at 1x1, 17x5 and 33x65, one .vdmc each, decoded to the same pixels, palette,
    transparency; the JSON record describes the input."""
    for w, h in SIZES:
        src = write_image(tmp_path / f"{mode}_{w}x{h}.png", mode, w, h, seed=w + h)
        vdmc = tmp_path / f"{mode}_{w}x{h}.vdmc"
        rec = json_lines(ok(invoke("compress", src, "-o", vdmc, "--json")))
        assert len(rec) == 1
        rec = rec[0]
        assert (rec["width"], rec["height"], rec["mode"]) == (w, h, mode.split("-")[0])
        assert rec["bytes"] == vdmc.stat().st_size
        if mode.startswith("P") or mode == "1":
            assert rec["method"] == "classic"
        out = tmp_path / f"{mode}_{w}x{h}.out.png"
        r = ok(invoke("decompress", vdmc, "-o", out))
        assert str(out) in r.stdout and f"{w}x{h}" in r.stdout
        assert_same_content(src, out)


def test_roundtrip_kodak_crop_default_names(tmp_path):
    """Without -o: compress writes <stem>.vdmc beside the input, decompress <stem>.png beside the file."""
    src = kodak_crop(tmp_path / "kodim23_crop.png")
    ok(invoke("compress", src))
    vdmc = tmp_path / "kodim23_crop.vdmc"
    assert vdmc.is_file()
    sub = tmp_path / "sub"
    sub.mkdir()
    moved = sub / vdmc.name
    vdmc.rename(moved)
    ok(invoke("decompress", moved))
    assert_same_content(src, sub / "kodim23_crop.png")
    assert listing(sub) == {"kodim23_crop.vdmc", "kodim23_crop.png"}


def test_archive_of_every_mode_uses_bitsback_and_restores_all(tmp_path):
    """An archive is never replaced by a classic file, so the planes of L/LA/RGB/RGBA go
    through the bits-back chain here; every image comes back exactly."""
    srcs = [write_image(tmp_path / f"{m}.png", m, w, h, seed=i)
            for i, (m, (w, h)) in enumerate(zip(MODES, SIZES * 3))]
    srcs.append(kodak_crop(tmp_path / "kodak.png"))
    archive = tmp_path / "all.vdmc"
    recs = json_lines(ok(invoke("compress", *srcs, "--archive", "-o", archive, "--json")))
    assert [r["input"] for r in recs] == [str(s) for s in srcs]
    assert {r["output"] for r in recs} == {str(archive)}
    size = archive.stat().st_size
    assert all(r["archive_bytes"] == size for r in recs)
    assert sum(r["bytes"] for r in recs) <= size  # per-image shares exclude the header
    for r in recs:
        assert r["method"] == ("classic" if r["mode"] in ("P", "1") else "bitsback"), r
        dims = r["width"] * r["height"] * CHANNELS[r["mode"]]
        assert abs(r["bpd"] - 8 * r["bytes"] / dims) <= 4 / dims  # bytes is the rounded share

    out = tmp_path / "restored"
    r = ok(invoke("decompress", archive, "-o", out))
    assert listing(out) == {s.name for s in srcs}
    assert len(r.stdout.splitlines()) == len(srcs)
    for s in srcs:
        assert_same_content(s, out / s.name)


def test_archive_default_folder(tmp_path):
    a = write_image(tmp_path / "a.png", "RGB", 9, 7, seed=1)
    b = write_image(tmp_path / "b.png", "L", 5, 3, seed=2)
    ok(invoke("compress", a, b, "--archive", "-o", tmp_path / "pair.vdmc"))
    ok(invoke("decompress", tmp_path / "pair.vdmc"))  # -> pair/
    assert listing(tmp_path / "pair") == {"a.png", "b.png"}
    assert_same_content(a, tmp_path / "pair" / "a.png")
    assert_same_content(b, tmp_path / "pair" / "b.png")
    assert_error(invoke("decompress", tmp_path / "pair.vdmc", "-o", tmp_path / "x.png"), 2, "names a folder")
    assert not (tmp_path / "x.png").exists()


def test_archive_without_output_is_usage_error(tmp_path):
    a = write_image(tmp_path / "a.png", "RGB", 4, 4)
    b = write_image(tmp_path / "b.png", "RGB", 4, 4, seed=1)
    assert_error(invoke("compress", a, b, "--archive"), 2, "--archive")
    assert listing(tmp_path) == {"a.png", "b.png"}


# ----------------------------------------------------------------------------- --json


REQUIRED_FIELDS = {"input", "output", "width", "height", "mode", "bytes", "bpd", "nelbo_bpd", "overhead_bytes",
                   "encode_seconds", "method", "regions", "seed_bytes", "classic_rows", "coder_overhead_bits", "sampling_bits",
                   "terms_bpd"}


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_json_fields_single_file(tmp_path, mode):
    w, h = 11, 6
    src = write_image(tmp_path / "img.png", mode, w, h, seed=3)
    out = tmp_path / "img.vdmc"
    r = ok(invoke("compress", src, "-o", out, "--json"))
    assert len(r.stdout.splitlines()) == 1  # one JSON object per line, nothing else on stdout
    rec = json_lines(r)[0]
    assert REQUIRED_FIELDS | {"decode_seconds"} <= rec.keys()
    dims = w * h * CHANNELS[mode]
    assert rec["input"] == str(src) and rec["output"] == str(out)
    assert (rec["width"], rec["height"], rec["mode"]) == (w, h, mode)
    assert rec["bytes"] == out.stat().st_size
    assert rec["bpd"] == pytest.approx(8 * rec["bytes"] / dims, rel=1e-12)
    assert rec["method"] in ("bitsback", "classic")
    # the bits-back file's size: this file's, or what the classic file beat
    assert rec["bitsback_bytes"] == rec["bytes"] if rec["method"] == "bitsback" else rec["bitsback_bytes"] > rec["bytes"]
    assert rec["nelbo_bpd"] > 0
    assert set(rec["terms_bpd"]) == {"recon", "prior", "diffusion"}
    assert sum(rec["terms_bpd"].values()) == pytest.approx(rec["nelbo_bpd"], rel=1e-9)
    assert rec["overhead_bytes"] == round(rec["bytes"] - rec["nelbo_bpd"] * dims / 8)
    assert rec["encode_seconds"] >= 0 and rec["decode_seconds"] >= 0
    # `info` sees the same file size and bpd
    info = json_lines(ok(invoke("info", "--json", out)))[0]
    assert info["bytes"] == rec["bytes"] and info["bpd"] == pytest.approx(rec["bpd"])


def test_json_no_verify_has_no_decode_seconds(tmp_path):
    src = write_image(tmp_path / "img.png", "RGB", 8, 8)
    rec = json_lines(ok(invoke("compress", src, "--json", "--no-verify")))[0]
    assert "decode_seconds" not in rec and rec["encode_seconds"] >= 0
    ok(invoke("decompress", tmp_path / "img.vdmc", "-o", tmp_path / "back.png"))
    assert_same_content(src, tmp_path / "back.png")


def test_json_classic_modes_have_null_nelbo(tmp_path):
    src = write_image(tmp_path / "p.png", "P", 7, 5)
    rec = json_lines(ok(invoke("compress", src, "--json")))[0]
    assert rec["mode"] == "P" and rec["method"] == "classic"
    assert rec["nelbo_bpd"] is None and rec["overhead_bytes"] is None
    assert rec["bpd"] == pytest.approx(8 * rec["bytes"] / 35)


def test_text_output_without_json(tmp_path):
    src = write_image(tmp_path / "img.png", "RGB", 6, 6)
    r = ok(invoke("compress", src))
    line = r.stdout.strip()
    size = (tmp_path / "img.vdmc").stat().st_size
    assert line.startswith(f"{src} -> {tmp_path / 'img.vdmc'}: {size} bytes") and "verified" in line


# ----------------------------------------------------------------------------- several inputs


def test_several_inputs_into_folder(tmp_path):
    srcs = [write_image(tmp_path / f"im{i}.png", m, 5 + i, 4, seed=i) for i, m in enumerate(["L", "RGB", "RGBA"])]
    folder = tmp_path / "out" / "deeper"
    recs = json_lines(ok(invoke("compress", *srcs, "-o", folder, "--json")))
    assert listing(folder) == {"im0.vdmc", "im1.vdmc", "im2.vdmc"}
    assert [r["input"] for r in recs] == [str(s) for s in srcs]
    for s, r in zip(srcs, recs):
        vdmc = folder / f"{s.stem}.vdmc"
        assert r["output"] == str(vdmc) and r["bytes"] == vdmc.stat().st_size
        ok(invoke("decompress", vdmc))
        assert_same_content(s, folder / f"{s.stem}.png")


def test_several_inputs_with_same_stem_is_usage_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x1 = write_image(tmp_path / "a" / "x.png", "L", 3, 3)
    x2 = write_image(tmp_path / "b" / "x.png", "L", 3, 3, seed=1)
    assert_error(invoke("compress", x1, x2, "-o", tmp_path / "out"), 2)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- info, eval


def test_info_text_and_json(tmp_path, cli_models):
    a = write_image(tmp_path / "first.png", "RGBA", 9, 4)
    b = write_image(tmp_path / "second.png", "P-trns", 6, 5)
    vdmc = tmp_path / "two.vdmc"
    ok(invoke("compress", a, b, "--archive", "-o", vdmc))
    size = vdmc.stat().st_size
    dims = 9 * 4 * 4 + 6 * 5

    text = ok(invoke("info", vdmc)).stdout
    assert f"({size} bytes, {8 * size / dims:.4f} bpd over {dims} dims)" in text
    assert "archive" in text and "tiny-a" in text
    assert "first: 9x4 RGBA, bitsback" in text and "second: 6x5 P, classic" in text

    info = json_lines(ok(invoke("info", "--json", vdmc)))
    assert len(info) == 1
    info = info[0]
    assert info["file"] == str(vdmc) and info["bytes"] == size
    assert info["bpd"] == pytest.approx(8 * size / dims)
    hdr = info["header"]
    assert hdr["archive"] is True and hdr["model"]["id"] == "tiny-a"
    from vdmcodec.checkpoints import file_sha256

    assert hdr["model"]["sha256"] == file_sha256(cli_models[0])
    assert hdr["coder"]["plan"] == [0, 1, 2, 4] and hdr["coder"]["T"] == 3  # --effort default on T = 4
    assert hdr["compute"]["threads"] == 1
    assert [(e["name"], e["width"], e["height"], e["mode"]) for e in hdr["images"]] == [
        ("first", 9, 4, "RGBA"), ("second", 6, 5, "P")]


def test_eval_json_on_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    srcs = [write_image(folder / "a.png", "RGB", 17, 5), write_image(folder / "b.png", "L", 8, 9, seed=1)]
    (folder / "notes.txt").write_text("not an image, and not picked up by suffix")
    r = ok(invoke("eval", folder, "--json"))
    recs = json_lines(r)
    assert [rec["input"] for rec in recs] == [str(s) for s in srcs]
    assert [rec["dims"] for rec in recs] == [17 * 5 * 3, 8 * 9]
    for rec in recs:
        assert {"input", "dims", "nelbo_bpd", "terms", "T", "seconds"} <= rec.keys()
        assert set(rec["terms"]) == {"recon", "prior", "diffusion"}
        assert all(np.isfinite(v) for v in rec["terms"].values())
        assert np.isfinite(rec["nelbo_bpd"]) and rec["nelbo_bpd"] > 0
        assert sum(rec["terms"].values()) == pytest.approx(rec["nelbo_bpd"], rel=1e-9)
        assert rec["T"] == 4 and rec["steps"] == 3 and rec["effort"] == "default"
    # the same seed gives the same estimate; the text mode prints one line per image plus the mean
    again = json_lines(ok(invoke("eval", folder, "--json")))
    assert [x["nelbo_bpd"] for x in again] == [x["nelbo_bpd"] for x in recs]
    text = ok(invoke("eval", *srcs)).stdout.splitlines()
    assert len(text) == 3 and text[-1].startswith("mean over 2 images")
    # palette images are not the model's: skipped with a note on stderr, nothing on stdout
    pal = write_image(tmp_path / "pal.png", "P", 4, 4)
    r = ok(invoke("eval", pal, "--json"))
    assert r.stdout == "" and "skipping" in r.stderr


def test_ensemble_option_is_recorded_and_decoded(tmp_path):
    """An archive never falls back to the classic code, so its planes go through the
    ensembled chain; the decoder takes the ensemble size from the file."""
    srcs = [write_image(tmp_path / "a.png", "RGB", 17, 12, seed=4), write_image(tmp_path / "b.png", "L", 9, 8, seed=5)]
    vdmc = tmp_path / "two.vdmc"
    recs = json_lines(ok(invoke("compress", *srcs, "--archive", "-o", vdmc, "--json", "--ensemble", "2")))
    assert [r["method"] for r in recs] == ["bitsback", "bitsback"]
    assert header_of(vdmc)["compute"]["ensemble"] == 2
    assert "ensemble 2" in ok(invoke("info", vdmc)).stdout
    ok(invoke("decompress", vdmc, "-o", tmp_path / "back"))
    for src in srcs:
        assert_same_content(src, tmp_path / "back" / src.name)
    ens = json_lines(ok(invoke("eval", srcs[0], "--json", "--ensemble", "4")))[0]
    one = json_lines(ok(invoke("eval", srcs[0], "--json", "--ensemble", "1")))[0]
    assert (ens["ensemble"], one["ensemble"]) == (4, 1)  # (these untrained models are flip-equivariant)
    # plan 0, 1, 2, 4: one step ensembled; 8 calls at z_0 (default effort) for an own context
    assert (ens["network_calls"], one["network_calls"]) == (8 + 4 + 2, 8 + 1 + 2)
    assert invoke("compress", srcs[0], "-o", tmp_path / "x.vdmc", "--ensemble", "3").exit_code == 2


@pytest.mark.parametrize("effort,plan,calls", [("fast", [0, 1, 2, 4], 2 + 3), ("default", [0, 1, 2, 4], 8 + 4),
                                               ("max", [0, 1, 2, 3, 4], 8 + 7)])
def test_effort_sets_the_plan_and_ensemble(tmp_path, effort, plan, calls):
    src = write_image(tmp_path / "a.png", "RGB", 17, 12, seed=4)
    other = write_image(tmp_path / "b.png", "L", 9, 8, seed=5)
    vdmc = tmp_path / "e.vdmc"
    ok(invoke("compress", src, other, "--archive", "-o", vdmc, "--effort", effort))
    hdr = header_of(vdmc)
    assert hdr["coder"]["plan"] == plan and hdr["coder"]["T"] == len(plan) - 1
    ok(invoke("decompress", vdmc, "-o", tmp_path / "back"))
    assert_same_content(src, tmp_path / "back" / src.name)
    rec = json_lines(ok(invoke("eval", src, "--json", "--effort", effort)))[0]
    assert rec["network_calls"] == calls and rec["steps"] == len(plan) - 1  # at z_0 (own context) + steps
    assert hdr["compute"]["z0_ensemble"] == {"fast": 2, "default": 8, "max": 8}[effort]
    assert invoke("compress", src, "-o", tmp_path / "x.vdmc", "--effort", "slow").exit_code == 2


def test_image_context_is_sent_used_and_switchable(tmp_path, monkeypatch):
    """With the keep rule forced, compress sends each image's own pixel-context weights,
    info shows them, decompress uses them, and eval prices them into total_bpd;
    --no-image-context sends none.  (An archive, so that no image falls back to classic.)"""
    from vdmcodec.coding import adapt

    monkeypatch.setattr(adapt, "KEEP_IF_SAVING_OVER_COST", -1e9)
    srcs = [write_image(tmp_path / "a.png", "RGB", 24, 20, seed=6), write_image(tmp_path / "b.png", "L", 9, 8, seed=7)]
    own, plain = tmp_path / "own.vdmc", tmp_path / "plain.vdmc"
    recs = json_lines(ok(invoke("compress", *srcs, "--archive", "-o", own, "--json")))
    # Golomb-Rice codes of the steps, less than a byte each: RGB 687 + 12 colour shifts + 45
    # feature read-out (tiny net), grey 79
    sizes = [r["context_bytes"] for r in recs]
    assert 0 < sizes[0] < 744 and 0 < sizes[1] < 79
    assert [e["pixel_context"] for e in header_of(own)["images"]] == ["context0", "context1"]
    assert ok(invoke("info", own)).stdout.count("own pixel context") == 2
    ok(invoke("compress", *srcs, "--archive", "-o", plain, "--no-image-context"))
    assert not any("pixel_context" in e for e in header_of(plain)["images"])
    for f in (own, plain):
        ok(invoke("decompress", f, "-o", tmp_path / f.stem))
        for src in srcs:
            assert_same_content(src, tmp_path / f.stem / src.name)
    fitted = json_lines(ok(invoke("eval", srcs[0], "--json")))[0]
    model = json_lines(ok(invoke("eval", srcs[0], "--json", "--no-image-context")))[0]
    assert fitted["image_context"] and not model["image_context"]
    assert fitted["side_bpd"] == 8 * (sizes[0] + adapt.HEADER_BYTES) / fitted["dims"]  # priced as sent
    assert fitted["total_bpd"] == pytest.approx(fitted["nelbo_bpd"] + fitted["side_bpd"])
    assert model["total_bpd"] == model["nelbo_bpd"] and model["side_bpd"] == 0
    assert fitted["terms"]["recon"] != model["terms"]["recon"]
    assert fitted["terms"]["diffusion"] == model["terms"]["diffusion"]  # same draws, only p(x | z_0) differs


# ----------------------------------------------------------------------------- errors


def test_missing_input_exit_3(tmp_path):
    assert_error(invoke("compress", tmp_path / "nope.png"), 3, "nope.png")
    assert_error(invoke("decompress", tmp_path / "nope.vdmc"), 3, "nope.vdmc")
    assert_error(invoke("info", tmp_path / "nope.vdmc"), 3, "nope.vdmc")
    assert_error(invoke("eval", tmp_path / "nope.png"), 3, "nope.png")
    assert_error(invoke("decompress", tmp_path), 2, "--recursive")  # a folder needs -r
    assert listing(tmp_path) == set()


def test_not_an_image_exit_4(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("hello, I am text")
    assert_error(invoke("compress", bad), 4, "bad.png")
    trunc = tmp_path / "trunc.png"
    write_image(tmp_path / "full.png", "RGB", 40, 40)
    trunc.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    assert_error(invoke("compress", trunc), 4, "trunc.png")
    assert_error(invoke("eval", bad), 4, "bad.png")
    assert listing(tmp_path) == {"bad.png", "trunc.png", "full.png"}


def test_compress_to_an_image_name_is_a_usage_error(tmp_path):
    src = write_image(tmp_path / "a.png", "RGB", 8, 8)
    for name in ("out.png", "OUT.JPG"):
        assert_error(invoke("compress", src, "-o", tmp_path / name), 2, ".vdmc")
        assert not (tmp_path / name).exists()


def test_declared_huge_image_exit_5_before_work_and_bad_options_exit_2(tmp_path):
    from test_image_io import declared_size_png

    bomb = declared_size_png(tmp_path / "bomb.png", 12000, 12000)
    assert_error(invoke("compress", bomb), 5, "--max-pixels")
    assert_error(invoke("compress", bomb, "--max-pixels", "1000"), 5, "limit of 1,000")
    assert not (tmp_path / "bomb.vdmc").exists()
    result = invoke("compress", bomb, "--threads", "-3")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_unsupported_images_exit_5(tmp_path):
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).save(tmp_path / "deep.png")
    Image.new("CMYK", (4, 3), (1, 2, 3, 4)).save(tmp_path / "cmyk.tif")
    frames = [Image.new("L", (4, 4), v) for v in (0, 255)]
    frames[0].save(tmp_path / "multi.tif", save_all=True, append_images=frames[1:])
    assert_error(invoke("compress", tmp_path / "deep.png"), 5, "16-bit")
    imagecodecs = pytest.importorskip("imagecodecs")
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(np.full((4, 5, 3), 35209, dtype=np.uint16)))
    assert_error(invoke("compress", tmp_path / "rgb16.png"), 5, "16-bit")
    assert not (tmp_path / "rgb16.vdmc").exists()
    assert_error(invoke("compress", tmp_path / "cmyk.tif"), 5, "CMYK")
    assert_error(invoke("compress", tmp_path / "multi.tif"), 5, "multi-frame")
    assert not list(tmp_path.glob("*.vdmc"))


def test_existing_output_exit_6_untouched_and_force_overwrites(tmp_path):
    src = write_image(tmp_path / "img.png", "RGB", 7, 6)
    vdmc = tmp_path / "img.vdmc"
    vdmc.write_bytes(b"precious")
    assert_error(invoke("compress", src), 6, "-f")
    assert vdmc.read_bytes() == b"precious"
    ok(invoke("compress", src, "-f"))
    assert vdmc.read_bytes()[:8] == b"\x89VDMC\r\n\x1a"

    out = tmp_path / "back.png"
    out.write_bytes(b"precious too")
    assert_error(invoke("decompress", vdmc, "-o", out), 6, "-f")
    assert out.read_bytes() == b"precious too"
    ok(invoke("decompress", vdmc, "-o", out, "-f"))
    assert_same_content(src, out)
    assert listing(tmp_path) == {"img.png", "img.vdmc", "back.png"}


def test_existing_output_in_archive_folder_exit_6(tmp_path):
    a = write_image(tmp_path / "a.png", "L", 4, 4)
    b = write_image(tmp_path / "b.png", "L", 4, 4, seed=1)
    ok(invoke("compress", a, b, "--archive", "-o", tmp_path / "ab.vdmc"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"keep")
    assert_error(invoke("decompress", tmp_path / "ab.vdmc", "-o", out), 6, "b.png")
    assert listing(out) == {"b.png"} and (out / "b.png").read_bytes() == b"keep"
    ok(invoke("decompress", tmp_path / "ab.vdmc", "-o", out, "-f"))
    assert_same_content(b, out / "b.png")


def test_unwritable_output_exit_7(tmp_path):
    src = write_image(tmp_path / "img.png", "RGB", 5, 5)
    before = listing(tmp_path)
    assert_error(invoke("compress", src, "-o", tmp_path / "no" / "such" / "x.vdmc"), 7, "x.vdmc")
    assert_error(invoke("compress", src, "-o", src / "x.vdmc"), 7)  # a file used as a folder
    assert listing(tmp_path) == before
    ok(invoke("compress", src))
    before = listing(tmp_path)
    assert_error(invoke("decompress", tmp_path / "img.vdmc", "-o", tmp_path / "no" / "x.png"), 7, "x.png")
    assert_error(invoke("decompress", tmp_path / "img.vdmc", "-o", src / "x.png"), 7)
    assert listing(tmp_path) == before



def test_several_inputs_into_a_file_used_as_folder_exit_7(tmp_path):
    """`-o` names a folder for several inputs; an existing file there cannot become one."""
    a = write_image(tmp_path / "a.png", "L", 3, 3)
    b = write_image(tmp_path / "b.png", "L", 3, 3, seed=1)
    blocker = tmp_path / "out"
    blocker.write_bytes(b"a file")
    r = invoke("compress", a, b, "-o", blocker)
    assert_error(r, 7, "out")
    assert blocker.read_bytes() == b"a file" and listing(tmp_path) == {"a.png", "b.png", "out"}


def test_archive_into_a_file_used_as_folder_exit_7(tmp_path):
    a = write_image(tmp_path / "a.png", "L", 3, 3)
    b = write_image(tmp_path / "b.png", "L", 3, 3, seed=1)
    ok(invoke("compress", a, b, "--archive", "-o", tmp_path / "ab.vdmc"))
    blocker = tmp_path / "out"
    blocker.write_bytes(b"a file")
    assert_error(invoke("decompress", tmp_path / "ab.vdmc", "-o", blocker), 7, "out")
    assert blocker.read_bytes() == b"a file"


def test_archive_without_suffix_default_folder(tmp_path):
    """`decompress arch` (no suffix) cannot use `arch` as its folder: a clear error, or another folder."""
    a = write_image(tmp_path / "a.png", "L", 3, 3)
    b = write_image(tmp_path / "b.png", "L", 3, 3, seed=1)
    arch = tmp_path / "arch"
    ok(invoke("compress", a, b, "--archive", "-o", arch))
    r = invoke("decompress", arch)
    if r.exit_code != 0:
        assert_error(r, r.exit_code)
        assert r.exit_code in (2, 7)
    assert arch.is_file()


def test_archive_with_duplicate_stems_loses_no_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x1 = write_image(tmp_path / "a" / "x.png", "L", 4, 4)
    x2 = write_image(tmp_path / "b" / "x.png", "RGB", 5, 3, seed=1)
    arch = tmp_path / "x.vdmc"
    r = invoke("compress", x1, x2, "--archive", "-o", arch)
    if r.exit_code == 2:  # refusing the duplicate names up front is a fine fix too
        assert_error(r, 2)
        assert not arch.exists()
        return
    ok(r)
    out = tmp_path / "out"
    ok(invoke("decompress", arch, "-o", out, "-f"))
    restored = sorted(out.iterdir())
    assert len(restored) == 2
    originals = [image_content(x1), image_content(x2)]
    for f in restored:
        c = image_content(f)
        assert any(c["mode"] == o["mode"] and np.array_equal(c["pixels"], o["pixels"]) for o in originals)


def test_unsuitable_output_format_is_usage_error(tmp_path):
    src = write_image(tmp_path / "grey.png", "L", 6, 6)
    ok(invoke("compress", src))
    assert_error(invoke("decompress", tmp_path / "grey.vdmc", "-o", tmp_path / "grey.webp"), 2, "webp")
    assert_error(invoke("decompress", tmp_path / "grey.vdmc", "-o", tmp_path / "grey.jpg"), 2, "jpg")
    assert listing(tmp_path) == {"grey.png", "grey.vdmc"}


@pytest.fixture
def small_file(tmp_path):
    """A bits-back archive (never replaced by a classic file) of two small images."""
    a = write_image(tmp_path / "a.png", "RGB", 9, 6)
    b = write_image(tmp_path / "b.png", "LA", 5, 4, seed=1)
    path = tmp_path / "ab.vdmc"
    ok(invoke("compress", a, b, "--archive", "-o", path))
    assert all(e["method"] == "bitsback" for e in header_of(path)["images"])
    return path


def test_not_a_vdmc_file_exit_8(tmp_path):
    png = write_image(tmp_path / "img.png", "RGB", 4, 4)
    empty = tmp_path / "empty.vdmc"
    empty.write_bytes(b"")
    for f in (png, empty):
        assert_error(invoke("decompress", f, "-o", tmp_path / "x.png"), 8, f.name)
        assert_error(invoke("info", f), 8, f.name)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("keep", ["5", "12", "30", "half", "minus1"])
def test_truncated_file_exit_8(small_file, keep):
    data = small_file.read_bytes()
    n = {"5": 5, "12": 12, "30": 30, "half": len(data) // 2, "minus1": len(data) - 1}[keep]
    cut = small_file.with_name("cut.vdmc")
    cut.write_bytes(data[:n])
    before = listing(small_file.parent)
    assert_error(invoke("decompress", cut, "-o", small_file.parent / "out"), 8, "cut.vdmc")
    assert_error(invoke("info", cut), 8, "cut.vdmc")
    assert listing(small_file.parent) == before


@pytest.mark.parametrize("where", ["header", "header_crc", "payload_first", "payload_last", "trailing"])
def test_corrupted_file_exit_8(small_file, where):
    data = bytearray(small_file.read_bytes())
    (hlen,) = struct.unpack_from("<I", data, 10)
    if where == "trailing":
        data += b"\0"
    else:
        pos = {"header": 14 + hlen // 2, "header_crc": 14 + hlen, "payload_first": 18 + hlen,
               "payload_last": len(data) - 1}[where]
        data[pos] ^= 0x10
    bad = small_file.with_name("bad.vdmc")
    bad.write_bytes(bytes(data))
    out = small_file.parent / "out"
    before = listing(small_file.parent)
    assert_error(invoke("decompress", bad, "-o", out), 8, "bad.vdmc")
    assert listing(small_file.parent) == before


def test_unknown_format_version_exit_9(small_file):
    from vdmcodec.container import FORMAT_VERSION
    data = bytearray(small_file.read_bytes())
    (hlen,) = struct.unpack_from("<I", data, 10)
    newer = FORMAT_VERSION + 1
    struct.pack_into("<H", data, 8, newer)
    struct.pack_into("<I", data, 14 + hlen, zlib.crc32(bytes(data[8 : 14 + hlen])))  # a well-formed header of a newer version
    v9 = small_file.with_name("newer.vdmc")
    v9.write_bytes(bytes(data))
    assert_error(invoke("decompress", v9, "-o", small_file.parent / "out"), 9, f"version {newer}")
    assert_error(invoke("info", v9), 9, f"version {newer}")
    assert not (small_file.parent / "out").exists()


def test_missing_checkpoint_exit_10(tmp_path, small_file, monkeypatch):
    src = write_image(tmp_path / "img.png", "RGB", 4, 4)
    assert_error(invoke("compress", src, "--checkpoint", "/nope.pt"), 10, "/nope.pt")
    assert_error(invoke("decompress", small_file, "-o", tmp_path / "o", "--checkpoint", "/nope.pt"), 10, "/nope.pt")
    assert_error(invoke("eval", src, "--checkpoint", "/nope.pt"), 10, "/nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert_error(invoke("compress", src, "--checkpoint", garbage), 10, "garbage.pt")
    monkeypatch.setenv("VDMCODEC_CHECKPOINT", str(tmp_path / "gone.pt"))
    assert_error(invoke("compress", src), 10, "gone.pt")
    assert not list(tmp_path.glob("img.vdmc")) and not (tmp_path / "o").exists()


def test_decompress_finds_env_checkpoint_and_other_model_is_exit_11(small_file, cli_models, monkeypatch):
    out = small_file.parent / "out"
    assert_error(invoke("decompress", small_file, "-o", out, "--checkpoint", cli_models[1]), 11, "tiny-a")
    assert not out.exists()
    # the env var is what finds the model when --checkpoint is not given
    monkeypatch.setenv("VDMCODEC_CHECKPOINT", str(cli_models[1]))
    assert_error(invoke("decompress", small_file, "-o", out), 11, "tiny-a")
    assert not out.exists()
    monkeypatch.setenv("VDMCODEC_CHECKPOINT", str(cli_models[0]))
    ok(invoke("decompress", small_file, "-o", out))
    assert listing(out) == {"a.png", "b.png"}
    ok(invoke("decompress", small_file, "-o", out, "-f", "--checkpoint", cli_models[0]))


def test_no_traceback_unless_asked(tmp_path):
    r = invoke("--traceback", "compress", tmp_path / "nope.png")
    assert r.exit_code == 3
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("vdmcodec: error: ")


# ----------------------------------------------------------------------------- atomic writes


def test_failing_compress_of_several_inputs_writes_nothing(tmp_path):
    good = [write_image(tmp_path / f"g{i}.png", "RGB", 6, 5, seed=i) for i in range(2)]
    bad = tmp_path / "z_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = listing(tmp_path)
    assert_error(invoke("compress", good[0], bad, good[1]), 4, "z_bad.png")
    assert_error(invoke("compress", good[0], bad, good[1], "-o", tmp_path / "out"), 4)
    assert_error(invoke("compress", good[0], bad, good[1], "--archive", "-o", tmp_path / "ar.vdmc"), 4)
    assert_error(invoke("compress", good[0], tmp_path / "missing.png", "-o", tmp_path / "out"), 3)
    assert listing(tmp_path) == before


def test_failed_final_write_leaves_no_temp_file(tmp_path):
    """The rename over an existing folder fails after the temp file was written: it must go."""
    src = write_image(tmp_path / "img.png", "RGB", 6, 5)
    ok(invoke("compress", src))
    for cmd in (("compress", src, "-o"), ("decompress", tmp_path / "img.vdmc", "-o")):
        target = tmp_path / f"{cmd[0]}_target"
        target.mkdir()
        (target / "inside").write_bytes(b"x")
        before = listing(tmp_path)
        assert_error(invoke(*cmd, target, "-f"), 7)
        assert listing(tmp_path) == before
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_failed_decode_leaves_no_output(small_file, cli_models):
    folder = small_file.parent
    out = folder / "restored"
    before = listing(folder)
    data = bytearray(small_file.read_bytes())
    data[-1] ^= 1
    small_file.with_name("bad.vdmc").write_bytes(bytes(data))
    before.add("bad.vdmc")
    assert_error(invoke("decompress", folder / "bad.vdmc", "-o", out), 8)
    assert_error(invoke("decompress", small_file, "-o", out, "--checkpoint", cli_models[1]), 11)
    assert listing(folder) == before


# ----------------------------------------------------------------------------- misc


def test_version():
    r = ok(invoke("--version"))
    assert f"vdmcodec {vdmcodec.__version__}" in r.stdout
    assert f"torch {torch.__version__}" in r.stdout
    assert f"constriction {importlib.metadata.version('constriction')}" in r.stdout
    assert "default model tiny-a" in r.stdout


def test_help_lists_commands():
    r = ok(invoke("--help"))
    for cmd in ("compress", "decompress", "info", "eval", "train"):
        assert cmd in r.stdout


def test_unwritable_or_unsuitable_outputs_fail_before_any_coding(tmp_path, monkeypatch):
    """An output that cannot be written, or a format that cannot hold the image, is an error
    before the model codes anything (the encoder and decoder are never reached)."""
    src = write_image(tmp_path / "g.png", "L", 9, 7)
    ok(invoke("compress", src, "-o", tmp_path / "g.vdmc"))

    def no_coding(*a, **k):
        raise AssertionError("coding started")

    monkeypatch.setattr("vdmcodec.codec.compress_images", no_coding)
    monkeypatch.setattr("vdmcodec.codec.decompress_bytes", no_coding)
    assert_error(invoke("compress", src, "-o", tmp_path / "missing" / "g.vdmc"), 7, "does not exist")
    assert_error(invoke("decompress", tmp_path / "g.vdmc", "-o", tmp_path / "g.webp"), 2, "cannot store a L image")
    assert_error(invoke("decompress", tmp_path / "g.vdmc", "-o", tmp_path / "missing" / "g.png"), 7, "does not exist")
    if os.path.isdir("/proc"):  # exists, but takes no new files
        assert_error(invoke("compress", src, "-o", "/proc/g.vdmc"), 7, "/proc")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_is_reported_before_coding(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    src = write_image(tmp_path / "g.png", "RGB", 9, 7)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    monkeypatch.setattr("vdmcodec.codec.compress_images", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    assert_error(invoke("compress", src, "-o", tmp_path / "g.vdmc"), 7, "not enough room", "100 bytes free")
    assert not (tmp_path / "g.vdmc").exists()


def test_text_mode_skips_the_seed_rows_nelbo_and_json_reports_it(tmp_path, monkeypatch):
    """The NELBO beside the size costs a chain pass over the classic seed rows: the text
    output does without it, --json reports it."""
    import vdmcodec.codec as codec

    calls = []
    seed_terms = codec._seed_terms
    monkeypatch.setattr(codec, "_seed_terms", lambda *a, **k: calls.append(1) or seed_terms(*a, **k))
    src = kodak_crop(tmp_path / "crop.png")
    r = ok(invoke("compress", src, "-o", tmp_path / "a.vdmc"))
    assert not calls and "NELBO" not in r.stdout
    rec = json_lines(ok(invoke("compress", src, "-o", tmp_path / "b.vdmc", "--json")))[0]
    assert calls and rec["nelbo_bpd"] > 0
    assert (tmp_path / "a.vdmc").read_bytes() == (tmp_path / "b.vdmc").read_bytes()  # the same file either way


def test_installed_checkpoint_is_found_under_any_install_prefix(tmp_path, monkeypatch):
    """pip puts data files under the install's prefix; --user, --prefix and --target installs
    put the package a few folders below it (lib/pythonX.Y/site-packages/vdmcodec or
    TARGET/vdmcodec): the default checkpoint is found there, not only under sys.prefix."""
    import vdmcodec.checkpoints as ck

    for pkg in (tmp_path / "pfx" / "lib" / "python3.11" / "site-packages" / "vdmcodec", tmp_path / "tgt" / "vdmcodec"):
        prefix = pkg.parents[3] if "pfx" in str(pkg) else pkg.parent
        shipped = prefix / "share" / "vdmcodec" / "checkpoints" / ck.DEFAULT_CHECKPOINT_NAME
        shipped.parent.mkdir(parents=True)
        shipped.write_bytes(b"x")
        monkeypatch.setattr(ck, "PACKAGE_DIR", pkg)
        monkeypatch.delenv("VDMCODEC_CHECKPOINT", raising=False)
        assert ck.default_checkpoint_path() == shipped


@pytest.mark.parametrize("skipped", [True, False])
def test_human_line_says_what_the_classic_file_beat(capsys, skipped):
    """A classic file names the bits-back size it beat: coded, or estimated when the chain
    was skipped (then the NELBO shown is the estimate's too)."""
    from vdmcodec.cli import _print_compressed

    rec = {"output": "o.vdmc", "bytes": 1000, "bpd": 2.0, "nelbo_bpd": 2.1, "method": "classic",
           "skipped_chain": skipped, "estimated_bitsback_bytes": 1100 if skipped else None,
           "bitsback_bytes": None if skipped else 1050, "decode_seconds": 0.1}
    _print_compressed("i.png", rec, None, as_json=False)
    line = capsys.readouterr().out.strip()
    if skipped:
        assert "NELBO estimated 2.100" in line and "bits-back estimated at 2.200 bpd, not coded" in line
    else:
        assert "NELBO 2.100" in line and "[classic; bits-back 2.100 bpd]" in line
    assert line.startswith("i.png -> o.vdmc: 1000 bytes, 2.000 bpd") and line.endswith("verified")


def test_a_reader_that_leaves_early_is_not_an_internal_error(tmp_path):
    """`vdmcodec info F | head`: the write to a closed pipe ends the command with 141
    (128 + SIGPIPE, as a shell reports it), saying nothing, not as a bug."""
    import subprocess
    import sys

    src = write_image(tmp_path / "a.png", "RGB", 6, 5)
    ok(invoke("compress", src, "-o", tmp_path / "a.vdmc"))
    code = ("import os, sys, subprocess; r, w = os.pipe(); os.close(r); "
            "p = subprocess.run([sys.executable, '-m', 'vdmcodec', 'info', sys.argv[1], '--json'], stdout=w, "
            "stderr=subprocess.PIPE); print(p.returncode, repr(p.stderr.decode()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.vdmc")], capture_output=True, text=True)
    rc, err = out.stdout.split(" ", 1)
    assert rc == "141" and "error" not in err, out.stdout


def test_info_names_the_classic_code_inside():
    here = Path(__file__).resolve().parent / "data"
    result = ok(invoke("info", here / "s23_v12_ycc_half.vdmc"))
    assert "classic-planes (lsq-ycc: libjpeg YCbCr, chroma at half resolution)" in result.output
    assert "classic-planes (lsq)" in ok(invoke("info", here / "s22_v11_lsq_grey.vdmc")).output
    coef = ok(invoke("info", here / "s24_v13_coef_half.vdmc")).output
    assert "chroma at half resolution, luma and chroma as JPEG DCT coefficients)" in coef
    model2 = ok(invoke("info", here / "s25_v14_coef_rows.vdmc")).output
    assert "half resolution in the rows, luma and chroma as JPEG DCT coefficients (model 2))" in model2
