"""HSM simulator speaking payShield-style host commands over TCP (test keys only).

``start_hsm`` / ``HsmServer`` run it in-process; ``encrypt_under_lmk`` provisions test keys;
``posswitch hsm`` runs it from the command line.  See ``docs/hsm.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HsmServer", "start_hsm", "encrypt_under_lmk"]


def __getattr__(name: str) -> Any:  # lazy: `posswitch hsm form-key` need not import the server
    if name in ("HsmServer", "start_hsm"):
        from . import server

        return getattr(server, name)
    if name == "encrypt_under_lmk":
        from .lmk import encrypt_under_lmk

        return encrypt_under_lmk
    raise AttributeError(f"module 'hsm_sim' has no attribute {name!r}")
