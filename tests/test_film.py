"""An image's own FiLM deltas of the network (coding.film): the fit, the adapted networks in
float and exact arithmetic, and files that carry them."""

import doctest

import numpy as np
import pytest
import torch

from helpers import assert_roundtrip, kodak_crop, raster
from vdmcodec import codec
from vdmcodec.coding import film as film_mod
from vdmcodec.coding.film import FilmBudget, FilmDeltas, adapted_exact_net, adapted_float_net, film_sizes
from vdmcodec.errors import CorruptFileError


@pytest.fixture(scope="module")
def model():
    from vdmcodec.checkpoints import load_checkpoint
    return load_checkpoint(None)


def some_deltas(net, seed: int = 0, spread: int = 6) -> FilmDeltas:
    rng = np.random.default_rng(seed)
    return FilmDeltas(tuple(rng.integers(-spread, spread + 1, n) for n in film_sizes(net)))


def test_docstring_examples_run():
    assert doctest.testmod(film_mod, raise_on_error=True).attempted > 0


def test_the_exact_network_with_deltas_follows_the_float_network_with_them(model):
    if model.exact is None:
        pytest.skip("the shipped model has no exact tables")
    net, exact = model.model.net, model.exact.net
    d = some_deltas(net)
    zero = FilmDeltas(tuple(np.zeros(n, np.int64) for n in film_sizes(net)))
    same = adapted_exact_net(exact, net, zero)
    for name, layer in exact.layers.items():  # no delta: the very same tables
        assert torch.equal(same.layers[name].mult, layer.mult) and torch.equal(same.layers[name].offset, layer.offset)
    step = 6  # a latent of a photo crop at a step that carries bits, on the network's 2^-8 grid
    gamma = model.gamma_table[step].float()
    x = torch.from_numpy(kodak_crop(24, 32, index=3).transpose(2, 0, 1)[None].astype(np.float32))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    z = torch.sqrt(torch.sigmoid(-gamma)) * ((2 * x + 1) / 256 - 1) + torch.sqrt(torch.sigmoid(gamma)) * noise
    z = torch.round(z * 256) / 256
    with torch.no_grad():
        plain = exact(z, step).numpy()
        got = adapted_exact_net(exact, net, d)(z, step).numpy()
        want = adapted_float_net(net, d)(z, gamma.reshape(1)).double().numpy()
        plain_float = net(z, gamma.reshape(1)).double().numpy()
    effect = np.abs(want - plain_float).mean()
    quantisation = np.abs(plain - plain_float).mean()  # the exact network's own distance from the float one
    assert effect > 5 * quantisation  # the deltas change the output well beyond it
    assert np.abs(got - want).mean() < 1.5 * quantisation  # and the exact tables follow the float network
    assert np.abs(got - plain).mean() > 0.5 * effect
    assert np.array_equal(adapted_exact_net(exact, net, d)(z, step).numpy(), got)  # the same bits again


def test_the_fit_lowers_the_images_diffusion_bits(model):
    from vdmcodec.coding.steps import StepModel
    sm = StepModel(model.model, model.gamma_table.numpy())
    planes = kodak_crop(192, 256, index=3, top=100, left=200)
    assert film_mod.fit_film(sm, planes, FilmBudget(steps=0)) is None
    assert film_mod.fit_film(sm, planes[:100], FilmBudget(steps=30)) is None  # too small to fit on
    torch.manual_seed(0)
    fitted, saving, cost = film_mod.fit_deltas(sm, planes, FilmBudget(steps=30))
    assert saving > 0 and cost > 8 * film_mod.HEADER_BYTES
    assert any(s.any() for s in fitted.steps) and max(np.abs(s).max() for s in fitted.steps) <= film_mod.FILM_LIMIT


def test_a_probe_judges_the_fit_so_far_and_may_end_it_there(model, monkeypatch):
    """At each of budget.probe_at's steps the probe sees the deltas so far as they would be
    judged at the end; stopping there gives the fit of that many steps, and fit_film drops a
    fit whose probe finds it far below its keep line."""
    from vdmcodec.coding.steps import StepModel
    sm = StepModel(model.model, model.gamma_table.numpy())
    planes = kodak_crop(192, 256, index=3, top=100, left=200)
    seen = []
    stopped = film_mod.fit_deltas(sm, planes, FilmBudget(steps=30, probe_at=(4, 8)),
                                  probe=lambda step, saving, cost: seen.append((step, saving, cost)) or step < 8)
    short = film_mod.fit_deltas(sm, planes, FilmBudget(steps=8))
    assert [step for step, _, _ in seen] == [4, 8]
    assert stopped[0] == short[0] and stopped[1:] == pytest.approx(short[1:])
    assert seen[1][1:] == pytest.approx(short[1:])
    monkeypatch.setattr(film_mod, "PROBE_KEEP_SHARE", float("inf"))  # nothing is on track
    judged = []
    real = film_mod._on_track
    monkeypatch.setattr(film_mod, "_on_track", lambda *a: judged.append(a[0]) or real(*a))
    assert film_mod.fit_film(sm, planes, FilmBudget(steps=30, probe_at=(4,))) is None and judged == [4]


@pytest.mark.parametrize("exact", [True, False])
def test_files_with_film_deltas_round_trip_and_need_them(model, exact, monkeypatch):
    if exact and model.exact is None:
        pytest.skip("the shipped model has no exact tables")
    from vdmcodec.container import pack_container, unpack_container
    image = [("x", raster(kodak_crop(20, 28, index=5)))]
    coder = codec.Coder.for_effort(model, "fast", exact=exact, adapt_context=False, threads=2)
    plain, _ = codec.compress_images(image, coder, allow_fallback=False)
    d = some_deltas(model.model.net, seed=2)
    monkeypatch.setattr(codec, "fit_film", lambda sm, planes, budget: d)
    with coder.remembering() as memo:
        data, reports, _ = assert_roundtrip(coder, image)
        if exact:
            assert memo.hits > 0  # the check reused the adapted network's outputs
    header, sections = unpack_container(data)
    assert header["images"][0]["film"] == "film0" and reports[0].film_bytes == len(sections["film0"])
    assert data != plain
    # the same stream decoded without the deltas does not give the image back
    entry = dict(header["images"][0])
    del entry["film"]
    without = pack_container(dict(header, images=[entry]), [(k, v) for k, v in sections.items() if k != "film0"])
    with pytest.raises(Exception) as info:
        codec.decompress_bytes(without, coder=coder)
    assert not isinstance(info.value, (AssertionError, TypeError))
    # a section that does not hold the model's deltas is a corrupt file
    short = pack_container(header, [(k, v[:-40] if k == "film0" else v) for k, v in sections.items()])
    with pytest.raises(CorruptFileError, match="FiLM"):
        codec.decompress_bytes(short, coder=coder)


def test_default_effort_fits_film_and_fast_does_not(model):
    assert codec.EFFORTS["fast"]["film"].steps == 0 < codec.EFFORTS["default"]["film"].steps \
        <= codec.EFFORTS["max"]["film"].steps
    assert codec.Coder.for_effort(model, "default", threads=1).film == codec.EFFORTS["default"]["film"]
    assert codec.Coder(model, threads=1).film.steps == 0
