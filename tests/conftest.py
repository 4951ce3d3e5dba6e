"""Shared fixtures: each _fastcore twin pair is tested through one suite.

``<name>_impl`` fixtures (iso8583, tlv, framing, crypto) yield the pure module
(``_fastcore._<name>_py``) and the compiled one (``_fastcore._<name>``); the
compiled case is marked ``c_extension`` and skipped with ``--no-c-extensions``.
Outside CI a compiled twin that was not built is skipped; in CI it fails.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

IN_CI = bool(os.environ.get("CI"))
TWINS = ["py", pytest.param("c", marks=pytest.mark.c_extension)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-c-extensions", action="store_true", help="skip the compiled twins")


def load_twin(request: pytest.FixtureRequest, name: str, which: str) -> ModuleType:
    if which == "py":
        return importlib.import_module(f"_fastcore._{name}_py")
    if request.config.getoption("--no-c-extensions") or os.environ.get("POSSWITCH_NO_EXTENSIONS"):
        pytest.skip("compiled twins disabled")
    try:
        return importlib.import_module(f"_fastcore._{name}")
    except ImportError as exc:
        if IN_CI:
            raise
        pytest.skip(f"_fastcore._{name} is not built: {exc}")


@pytest.fixture(scope="session", params=TWINS)
def iso8583_impl(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin(request, "iso8583", request.param)


@pytest.fixture(scope="session", params=TWINS)
def tlv_impl(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin(request, "tlv", request.param)


@pytest.fixture(scope="session", params=TWINS)
def framing_impl(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin(request, "framing", request.param)


@pytest.fixture(scope="session", params=TWINS)
def crypto_impl(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin(request, "crypto", request.param)
