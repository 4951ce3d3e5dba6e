"""Device self-test primitives for the terminal's diagnostics command.

Each check returns a :class:`terminal_bridge.devices.SelfTestResult` and never
raises: a missing or failing device is a ``ok=False`` line with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from escpos.escpos import Escpos

from .apdu import list_readers
from .devices import SelfTestResult
from .voice import espeak_binary


def check_printer(printer: Escpos, name: str = "printer") -> SelfTestResult:
    """DLE EOT 1 (online) and DLE EOT 4 (paper sensor) through python-escpos."""
    try:
        if not printer.is_online():
            return SelfTestResult(name, False, "offline (cover open, error or no answer)")
        paper = printer.paper_status()
    except Exception as exc:  # noqa: BLE001 - any back-end failure is a failed check
        return SelfTestResult(name, False, f"no status: {exc}")
    if paper == 0:
        return SelfTestResult(name, False, "out of paper")
    return SelfTestResult(name, True, "online, paper low" if paper == 1 else "online, paper ok")


def check_card_reader(reader: str = "", name: str = "card reader") -> SelfTestResult:
    """A PC/SC reader whose name contains ``reader`` is present (pcscd running, pyscard installed)."""
    readers = list_readers()
    match = [r for r in readers if reader in r]
    if not match:
        return SelfTestResult(name, False, f"no PC/SC reader matching {reader!r} (found: {readers or 'none'})")
    return SelfTestResult(name, True, match[0])


def check_input_device(path: str, name: str = "magstripe reader") -> SelfTestResult:
    p = Path(path)
    if not p.exists():
        return SelfTestResult(name, False, f"{path} does not exist")
    if not os.access(p, os.R_OK):
        return SelfTestResult(name, False, f"{path} not readable (root or the input group needed)")
    return SelfTestResult(name, True, path)


def check_serial(url: str, name: str = "serial device") -> SelfTestResult:
    import serial

    try:
        port = serial.serial_for_url(url, timeout=0.1)
    except (serial.SerialException, ValueError) as exc:
        return SelfTestResult(name, False, str(exc))
    port.close()
    return SelfTestResult(name, True, url)


def check_voice() -> SelfTestResult:
    exe = espeak_binary()
    if exe is None:
        return SelfTestResult("voice", False, "espeak-ng not installed")
    player = shutil.which("aplay") or shutil.which("play")
    return SelfTestResult("voice", True, f"{exe}; player {player or 'none (prompts rendered only)'}")
