"""Guard the fast path: when extensions are wanted, the compiled twins are the ones loaded."""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import _fastcore
from _fastcore import _compat

ROOT = Path(__file__).resolve().parent.parent
PAIRS = sorted(
    Path(p).stem[1:] for p in glob.glob(str(ROOT / "_fastcore" / "_*.pyx"))
)


def test_every_compiled_module_has_a_pure_twin() -> None:
    for name in PAIRS:
        assert (ROOT / "_fastcore" / f"_{name}_py.py").exists(), f"_fastcore/_{name}.pyx has no pure twin"


@pytest.mark.skipif(bool(os.environ.get("POSSWITCH_NO_EXTENSIONS")), reason="pure twins requested")
@pytest.mark.parametrize("name", PAIRS)
def test_compiled_twin_is_selected(name: str) -> None:
    selector = importlib.import_module(f"_fastcore.{name}")
    assert _compat.FALLBACKS.get(name) is None, _compat.FALLBACKS.get(name)
    assert selector.IMPLEMENTATION == "c"
    assert _fastcore.IMPLEMENTATION == "c"


@pytest.mark.parametrize("name", PAIRS)
def test_environment_flag_selects_pure_twins(name: str) -> None:
    code = (
        f"import _fastcore.{name} as m, _fastcore; "
        "print(m.IMPLEMENTATION, _fastcore.IMPLEMENTATION)"
    )
    env = dict(os.environ, POSSWITCH_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["py", "py"]
