"""Write a golden archive for tests/test_golden.py with the code of the checkout it runs in.

    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py 4 s4_tiny_four_pass.pt s4_four_pass.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v2 s4_tiny_four_pass.pt s6_v2_context_ensemble.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v4 s4_tiny_four_pass.pt s8_v4_metadata.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v2 s4_tiny_four_pass.pt s9_colour_shifts.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v5 s4_tiny_four_pass.pt s10_v5_z0_ensemble.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v6 ../../checkpoints/default.pt s11_v6_exact.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v6 ../../checkpoints/default.pt s12_v7_columns.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v5 s4_tiny_four_pass.pt s13_v8_rice.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v9 ../../checkpoints/default.pt s14_v9_film.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py v10 ../../checkpoints/default.pt s15_v10_zdict.vdmc
    VDMCODEC_DATA=../shared/data python tests/data/make_golden.py strips ../../checkpoints/default.pt s17_v10_strip.vdmc
    python tests/data/make_golden.py lsq ../../checkpoints/default.pt s22_v11_lsq
    python tests/data/make_golden.py ycc ../../checkpoints/default.pt s23_v12_ycc
    python tests/data/make_golden.py coef ../../checkpoints/default.pt s24_v13_coef
    python tests/data/make_golden.py coef2 ../../checkpoints/default.pt s25_v14_coef
    python tests/data/make_golden.py lsq2 ../../checkpoints/default.pt s26_v15_lsq_mixed
    python tests/data/make_golden.py ycc2 ../../checkpoints/default.pt s26_v15_ycc_mixed.vdmc
    python tests/data/make_golden.py lsq3 ../../checkpoints/default.pt s27_v16_lsq_pointers
    python tests/data/make_golden.py ycc2 ../../checkpoints/default.pt s27_v16_ycc_pointers.vdmc

(s3_* were written this way from commit 1f4cbec, with two passes and no context_passes
option.)  The crops come from Kodak; the PNGs beside them are the expected pixels.  "v2"
codes the same crops with the existing four-pass checkpoint, each image's own pixel-context
weights (the keep rule forced), the step plan 0, 1, 2, 4, 8 and a 2-call ensemble on its first
two steps: the format-2 header fields.  "v4" codes them with format 4's fields: metadata
(V4_METADATA on the RGB crop), image_defaults and 4-digit per-image hashes.  The "v2" run of
session 9 also sends the RGB crop's shifts of the colour coefficients per pass.  "v5" is
"v2" with format 5's 4-call flip ensemble at z_0 for the images with their own context (and,
with session 10's code, the RGB crop's read-out of the network's features).  "v6" codes the
crops with the shipped model (vdmc-rgb-t64-s11) in exact arithmetic (format 6's
compute.arith = exact1) at the fast effort, each image's own context forced: later
checkpoints must carry that model and its exact tables for the file to keep decoding.
Run again with session 12's code and model (vdmc-rgb-t64-s12: a context network of 64
hidden channels in float16, trained on 4 flipped calls at z_0, which every image then gets),
"v6" writes format 7: the archive's names and hashes as image_columns.  "v5" run with session
13's code writes format 8: the images' context sections as Golomb-Rice codes.  "v9" is "v6"
with the shipped model of session 13 (vdmc-rgb-t64-s13) and each image's own FiLM deltas of
the network forced (random steps in -4..4; the crops are too small for the encoder's fit):
format 9's images[].film sections, folded into the exact tables by the decoder.  Run with
session 15's code, "v10" is "v9" with 8 network calls at z_0 (the flips of z_0 and of its
transpose) in format 10: the header deflated from the preset dictionary, JPEG XL seeds.
"strips" (session 17, still format 10) codes the RGB crop alone at the default effort in
exact arithmetic with a classic strip in the middle of its rows (coding.bands; forced: the
crop is far too small for the encoder to choose one), between bits-back regions.
"lsq" (session 22, format 11) writes two single-image files of a 48x64 crop of the chelsea
example, RGB and its green plane as grey (s22_rgb.png, s22_grey.png), each stored whole in
the own least-squares code (classic tag 4, coding.lsq; forced, though it wins on both).
"ycc" (session 23, format 12) stores s22_rgb.png whole in the own code of its libjpeg
YCbCr planes (classic tag 5, coding.ycc; the crop is a JPEG decode with 31 escapes, its
chroma whole), and the 128x96 example through Pillow's JPEG at quality 90, 4:2:0
(s23_jpeg420.png), whose chroma is coded at half resolution.
"coef" (session 24, format 13) stores the 128x96 example through Pillow's JPEG at quality 75,
4:2:0 (s24_jpeg420_q75.png) and 4:4:4 (s24_jpeg444_q75.png), in the own code of their
YCbCr planes with Y, Cb and Cr as the JPEG's DCT coefficients (coding.jpegcoef; ycc mode byte
13 and 12).
"coef2" (session 25, format 14) stores the 128x96 example through Pillow's JPEG at quality 95,
4:2:0, with three pixels edited afterwards (s25_jpeg420_q95_edited.png: escapes, whose fixes
are relative to G), and at quality 90, 4:2:2 (s25_jpeg422_q90.png), with Y, Cb and Cr as
coefficients in jpegcoef's model 2 and the chroma found exactly with its IJG table (ycc mode
byte 29 and 30).
"lsq2" (session 26, format 15) writes two single-image files of a 48x64 crop of a film scan
that was never a JPEG (training data: lossless-misc/usc-sipi-house.png, rows 300-347,
columns 200-263), RGB and its green plane as grey (s26_rgb.png, s26_grey.png), each stored
whole in the own least-squares code's mixed model (classic tag 6, coding.lsqcm; forced).
"ycc2" (session 26, format 15) stores s22_rgb.png (a JPEG decode, chroma whole) in the own
code of its libjpeg YCbCr planes with that code in the mixed model the encoder writes (ycc
mode byte 32 in session 26; 64, the pointer contexts, from session 27, format 16).
"lsq3" (session 27, format 16) writes the pair as "lsq2" does of a 48x64 crop (rows 40-87,
columns 60-123) of s27_monastery_160.png (training data: a box-downsampled JPEG photograph,
where the pointer contexts pay), as s27_rgb.png and s27_grey.png, in the mixed model with its
pointer contexts (classic tag 7).
"""

import sys
from pathlib import Path

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import kodak_crop, raster, tiny_config  # noqa: E402
from vdmcodec.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from vdmcodec.codec import Coder, compress_images  # noqa: E402
from vdmcodec.container import unpack_container  # noqa: E402
from vdmcodec.model.vdm import VDM  # noqa: E402


def crops() -> list:
    rgb, grey = kodak_crop(22, 26, index=8), kodak_crop(13, 17, index=12)[:, :, 1]
    return [("s3_rgb.png", raster(rgb)), ("s3_grey.png", raster(grey[:, :, None].repeat(3, 2), mode="L"))]


def main_v2(ckpt_name: str, archive_name: str, z0_ensemble: int = 1) -> None:
    from vdmcodec.coding import adapt

    torch.set_num_threads(1)
    adapt.KEEP_IF_SAVING_OVER_COST = -1e9
    coder = Coder(load_checkpoint(HERE / ckpt_name), threads=1, ensemble=2, plan=(0, 1, 2, 4, 8), ensemble_steps=2,
                  z0_ensemble=z0_ensemble)
    data, _ = compress_images(crops(), coder)
    (HERE / archive_name).write_bytes(data)


V4_METADATA = (("png:0:gAMA", b"\x00\x00\xb1\x8f"), ("png:0:eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00"),
               ("png:2:tEXt", b"Comment\x00golden"))


def main_v6(ckpt_name: str, archive_name: str) -> None:
    from vdmcodec.coding import adapt

    torch.set_num_threads(2)
    adapt.KEEP_IF_SAVING_OVER_COST = -1e9
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "fast", threads=2, exact=True)
    data, _ = compress_images(crops(), coder)
    (HERE / archive_name).write_bytes(data)


def main_v9(ckpt_name: str, archive_name: str, z0_ensemble: int | None = None) -> None:
    import numpy as np

    from vdmcodec import codec
    from vdmcodec.coding import adapt
    from vdmcodec.coding.film import FilmDeltas, film_sizes

    torch.set_num_threads(2)
    adapt.KEEP_IF_SAVING_OVER_COST = -1e9
    lm = load_checkpoint(HERE / ckpt_name)
    rng = np.random.default_rng(9)
    codec.fit_film = lambda sm, planes, budget: FilmDeltas(tuple(rng.integers(-4, 5, n) for n in film_sizes(sm.model.net)))
    coder = Coder.for_effort(lm, "fast", threads=2, exact=True)
    if z0_ensemble:
        coder.use_steps(coder.plan, coder.ensemble, coder.ensemble_steps, z0_ensemble)
    data, _ = compress_images(crops(), coder)
    (HERE / archive_name).write_bytes(data)


def main_strips(ckpt_name: str, file_name: str) -> None:
    from vdmcodec import codec
    from vdmcodec.coding.bands import StripPlan

    torch.set_num_threads(2)
    name, img = crops()[0]

    def middle_strip(x, rows, classic_bits=None):
        return [StripPlan((8, 14), 0.0)]

    codec.SKIP_MIN_PIXELS, codec.MIN_BAND_IMAGE_ROWS, codec.plan_strips = 0, 0, middle_strip
    codec._classic_of_single = lambda coder, images: bytes(1 << 20)  # never smaller: the chain's file is kept
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    data, _ = compress_images([(name, img)], coder)
    (HERE / file_name).write_bytes(data)


def _force_own_code(want: str) -> None:
    """Make compress store every image whole in the own code `want` ("lsq" or "lsq-ycc"),
    which it must pick."""
    import vdmcodec.codec as codec
    from vdmcodec.coding import classic

    plain = classic.encode_rows

    def own_code_only(x, **kw):
        kw["lsq_max_pixels"] = 1 << 30
        name, blob = plain(x, **kw)
        assert name == want, name
        return name, blob

    classic.encode_rows = codec.encode_rows = own_code_only


def main_ycc(ckpt_name: str, stem: str) -> None:
    import io

    import numpy as np

    from vdmcodec.coding import classic

    buf = io.BytesIO()
    with Image.open(HERE.parents[1] / "examples" / "chelsea-128x96.png") as im:
        im.convert("RGB").save(buf, "JPEG", quality=90, subsampling=2)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        Image.fromarray(np.asarray(im.convert("RGB"))).save(HERE / "s23_jpeg420.png")
    _force_own_code("lsq-ycc")
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    for kind, png, mode in (("rgb", "s22_rgb.png", 0), ("half", "s23_jpeg420.png", 1)):
        with Image.open(HERE / png) as im:
            pixels = np.asarray(im.convert("RGB"))
        data, reports = compress_images([(png, raster(pixels))], coder)
        assert reports[0].method == "classic"
        (HERE / f"{stem}_{kind}.vdmc").write_bytes(data)
        header, sections = unpack_container(data)
        assert sections[header["images"][0]["planes_section"]][:2] == bytes([classic.TAG_YCC, mode])


def main_coef(ckpt_name: str, stem: str) -> None:
    import io

    import numpy as np

    from vdmcodec.coding import classic, ycc

    _force_own_code("lsq-ycc")
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    for kind, subsampling, mode in (("half", 2, ycc.HALF), ("whole", 0, ycc.WHOLE)):
        png = f"s24_jpeg{'420' if subsampling else '444'}_q75.png"
        buf = io.BytesIO()
        with Image.open(HERE.parents[1] / "examples" / "chelsea-128x96.png") as im:
            im.convert("RGB").save(buf, "JPEG", quality=75, subsampling=subsampling)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            pixels = np.asarray(im.convert("RGB"))
        Image.fromarray(pixels).save(HERE / png)
        data, reports = compress_images([(png, raster(pixels))], coder)
        assert reports[0].method == "classic"
        (HERE / f"{stem}_{kind}.vdmc").write_bytes(data)
        header, sections = unpack_container(data)
        want = mode | ycc.COEF_LUMA | ycc.COEF_CHROMA
        assert sections[header["images"][0]["planes_section"]][:2] == bytes([classic.TAG_YCC, want])


def main_coef2(ckpt_name: str, stem: str) -> None:
    import io

    import numpy as np

    from vdmcodec.coding import classic, ycc

    _force_own_code("lsq-ycc")
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    for kind, quality, subsampling, mode, png in (("half", 95, 2, ycc.HALF, "s25_jpeg420_q95_edited.png"),
                                                   ("rows", 90, 1, ycc.HALF_ROWS, "s25_jpeg422_q90.png")):
        buf = io.BytesIO()
        with Image.open(HERE.parents[1] / "examples" / "chelsea-128x96.png") as im:
            im.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=subsampling)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            pixels = np.asarray(im.convert("RGB")).copy()
        if kind == "half":
            pixels[[10, 50, 90], [20, 60, 100]] = [(255, 0, 255), (0, 200, 40), (17, 34, 51)]
        Image.fromarray(pixels).save(HERE / png)
        data, reports = compress_images([(png, raster(pixels))], coder)
        assert reports[0].method == "classic"
        (HERE / f"{stem}_{kind}.vdmc").write_bytes(data)
        header, sections = unpack_container(data)
        want = mode | ycc.COEF_LUMA | ycc.COEF_CHROMA | ycc.COEF_MODEL2
        assert sections[header["images"][0]["planes_section"]][:2] == bytes([classic.TAG_YCC, want])


def _lsq_pair(ckpt_name: str, stem: str, rgb, prefix: str, want: str) -> None:
    """Store the crop rgb and its green plane (as grey) whole in the own code `want`:
    {stem}_rgb.vdmc and {stem}_grey.vdmc, beside {prefix}_rgb.png and {prefix}_grey.png."""
    Image.fromarray(rgb).save(HERE / f"{prefix}_rgb.png")
    Image.fromarray(rgb[:, :, 1]).save(HERE / f"{prefix}_grey.png")
    _force_own_code(want)
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    for kind, img in (("rgb", raster(rgb)), ("grey", raster(rgb[:, :, 1:2].repeat(3, 2), mode="L"))):
        data, reports = compress_images([(f"{prefix}_{kind}.png", img)], coder)
        assert reports[0].method == "classic"
        (HERE / f"{stem}_{kind}.vdmc").write_bytes(data)


def main_lsq(ckpt_name: str, stem: str) -> None:
    import numpy as np

    with Image.open(HERE.parents[1] / "examples" / "chelsea-128x96.png") as im:
        rgb = np.asarray(im.convert("RGB"))[20:68, 40:104]
    _lsq_pair(ckpt_name, stem, rgb, "s22", "lsq")


def main_lsq2(ckpt_name: str, stem: str) -> None:
    import numpy as np

    source = HERE.parents[2] / "shared" / "data" / "train" / "lossless-misc" / "usc-sipi-house.png"
    with Image.open(source) as im:
        rgb = np.asarray(im.convert("RGB"))[300:348, 200:264]
    _lsq_pair(ckpt_name, stem, rgb, "s26", "lsq-mixed")


def main_lsq3(ckpt_name: str, stem: str) -> None:
    import numpy as np

    with Image.open(HERE / "s27_monastery_160.png") as im:
        rgb = np.asarray(im.convert("RGB"))[40:88, 60:124]
    _lsq_pair(ckpt_name, stem, rgb, "s27", "lsq-pointers")


def main_ycc2(ckpt_name: str, file_name: str) -> None:
    import numpy as np

    _force_own_code("lsq-ycc")
    coder = Coder.for_effort(load_checkpoint(HERE / ckpt_name), "default", threads=2, exact=True)
    with Image.open(HERE / "s22_rgb.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    data, reports = compress_images([("s22_rgb.png", raster(pixels))], coder)
    assert reports[0].method == "classic"
    (HERE / file_name).write_bytes(data)


def main_v4(ckpt_name: str, archive_name: str) -> None:
    from vdmcodec.metadata import ImageMetadata

    torch.set_num_threads(1)
    images = crops()
    images[0][1].metadata = ImageMetadata(V4_METADATA)
    data, _ = compress_images(images, Coder(load_checkpoint(HERE / ckpt_name), threads=1))
    (HERE / archive_name).write_bytes(data)


def main(passes: int, ckpt_name: str, archive_name: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(11)
    model = VDM(tiny_config(steps=8, decoder="xhat", pixel_context=True, context_passes=passes))
    with torch.no_grad():  # scrambled: the zero-initialised heads and context weights made random
        for name, p in model.net.named_parameters():
            if name.endswith("conv2.weight") or name.startswith("out."):
                p.normal_(0.0, 0.05)
        model.context_weight.normal_(0.0, 0.1)
        model.context_log_scale.normal_(0.0, 0.2)
    model.eval()
    save_checkpoint(HERE / ckpt_name, model, f"vdmc-test-{Path(ckpt_name).stem}", {"steps": 0})
    rgb, grey = kodak_crop(22, 26, index=8), kodak_crop(13, 17, index=12)[:, :, 1]
    Image.fromarray(rgb).save(HERE / "s3_rgb.png")
    Image.fromarray(grey).save(HERE / "s3_grey.png")
    coder = Coder(load_checkpoint(HERE / ckpt_name), threads=1)
    images = [("s3_rgb.png", raster(rgb)), ("s3_grey.png", raster(grey[:, :, None].repeat(3, 2), mode="L"))]
    data, _ = compress_images(images, coder)
    (HERE / archive_name).write_bytes(data)


if __name__ == "__main__":
    if sys.argv[1] == "v2":
        main_v2(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "v5":
        main_v2(sys.argv[2], sys.argv[3], z0_ensemble=4)
    elif sys.argv[1] == "v6":
        main_v6(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "v9":
        main_v9(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "v10":
        main_v9(sys.argv[2], sys.argv[3], z0_ensemble=8)
    elif sys.argv[1] == "strips":
        main_strips(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "ycc":
        main_ycc(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "coef":
        main_coef(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "coef2":
        main_coef2(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "lsq":
        main_lsq(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "lsq2":
        main_lsq2(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "lsq3":
        main_lsq3(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "ycc2":
        main_ycc2(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "v4":
        main_v4(sys.argv[2], sys.argv[3])
    else:
        main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
