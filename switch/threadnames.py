"""Give the calling OS thread its Python name, so ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm``
tell the journal's writer, checkpoint and reader threads apart (CPython 3.11 leaves them all "python").

Linux only (``prctl(PR_SET_NAME)``, 15 bytes at most); elsewhere, or if libc cannot be loaded, nothing
happens: a thread name is a convenience for operators, never a reason to fail.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any

_PR_SET_NAME = 15
_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def name_os_thread(name: str | None = None) -> bool:
    """Set the OS name of the calling thread to ``name`` (default: its ``threading`` name), cut to 15
    bytes.  Returns whether it was set."""
    if _prctl is None:
        return False
    raw = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    try:
        return bool(_prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0)
    except Exception:
        return False
