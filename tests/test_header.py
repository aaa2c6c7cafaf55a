"""vdmcodec.header: a header read as decode settings, without torch or PIL."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

from vdmcodec import header as hdr
from vdmcodec.errors import CorruptFileError

GOOD = {"model": {"id": "m", "sha256": "ab"}, "coder": {"T": 3, "plan": [0, 1, 2, 4], "context_rows": 4},
        "compute": {"device": "cpu", "threads": 2, "ensemble": 2, "ensemble_steps": 1, "z0_ensemble": 4,
                    "arith": "exact1"}}


def test_docstring_examples_run():
    assert doctest.testmod(hdr, raise_on_error=True).attempted > 0


def test_the_header_and_container_modules_import_neither_torch_nor_pil():
    code = ("import sys, vdmcodec.header, vdmcodec.container; "
            "print(any(m in sys.modules for m in ('torch', 'PIL', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ensemble_sizes_are_the_networks():
    from vdmcodec.model.network import ENSEMBLE_FLIPS

    assert hdr.ENSEMBLE_SIZES == tuple(ENSEMBLE_FLIPS)


def test_settings_of_a_header_and_the_defaults_of_older_formats():
    s = hdr.decode_settings(GOOD)
    assert (s.exact, s.threads, s.ensemble, s.ensemble_steps, s.z0_ensemble, s.context_rows) == (True, 2, 2, 1, 4, 4)
    assert s.plan_for(4) == (0, 1, 2, 4)
    old = hdr.decode_settings({"model": {"sha256": "ab"}, "compute": {"device": "cpu", "threads": 1}})
    assert (old.exact, old.plan_for(3), old.ensemble, old.z0_ensemble, old.context_rows) == (False, (0, 1, 2, 3), 1, 1, 0)


@pytest.mark.parametrize("path,value", [(("compute", "arith"), "exact9"), (("compute", "threads"), 0),
                                        (("compute", "ensemble"), 3), (("compute", "z0_ensemble"), "4"),
                                        (("compute", "device"), "tpu"), (("coder", "plan"), [0]),
                                        (("coder", "context_rows"), -1), (("compute", "threads"), "many"),
                                        (("model",), None)])
def test_implausible_fields_are_a_corrupt_file(path, value):
    import copy

    h = copy.deepcopy(GOOD)
    h[path[0]] = value if len(path) == 1 else dict(h[path[0]], **{path[1]: value})
    with pytest.raises(CorruptFileError):
        hdr.decode_settings(h)


@pytest.mark.parametrize("plan,T,steps", [((0, 1, 2, 4), 5, None), ((0, 2, 1, 4), 4, None), ((1, 2, 4), 4, None),
                                          ((0, 1, 2, 4), 4, 9)])
def test_plans_that_do_not_fit_the_model_are_a_corrupt_file(plan, T, steps):
    h = {**GOOD, "coder": {"plan": list(plan)}, "compute": dict(GOOD["compute"], ensemble_steps=steps)}
    with pytest.raises(CorruptFileError):
        hdr.decode_settings(h).plan_for(T)
