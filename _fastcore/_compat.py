"""One selection point for the compiled core.

``POSSWITCH_NO_EXTENSIONS=1`` (any non-empty value) selects the pure-Python
twins; otherwise the compiled modules are imported.  If the compiled module of
a twin pair cannot be imported while extensions are wanted, :func:`load` falls
back to the pure twin and records the reason in :data:`FALLBACKS`, which
``tests/test_fastcore_loaded.py`` turns into a failure in CI.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType

NO_EXTENSIONS: bool = bool(os.environ.get("POSSWITCH_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

#: module name -> reason the compiled twin was not used although wanted
FALLBACKS: dict[str, str] = {}


def load(name: str) -> ModuleType:
    """Return ``_fastcore._<name>`` (compiled) or ``_fastcore._<name>_py`` (pure)."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"_fastcore._{name}")
        except ImportError as exc:  # not built: keep running, but say so
            FALLBACKS[name] = f"{type(exc).__name__}: {exc}"
    return importlib.import_module(f"_fastcore._{name}_py")


def implementation_of(module: ModuleType) -> str:
    """``"c"`` for a compiled module, ``"py"`` for a pure-Python one."""
    path = getattr(module, "__file__", "") or ""
    return "py" if path.endswith(".py") else "c"
