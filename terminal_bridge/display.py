"""Text displays: the operator console and a serial customer pole display.

:class:`SerialPoleDisplay` speaks the common CD5220 command set (``ESC @`` init,
``FF``/``0C`` clear, ``ESC Q A text CR`` upper line, ``ESC Q B text CR`` lower
line) over pyserial; text is GB18030 so Chinese-capable displays show 支付成功.
Command sets differ per vendor (docs/terminal.md): the class isolates them.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .devices import DeviceError


class ConsoleDisplay:
    def __init__(self, out: TextIO | None = None, width: int = 32) -> None:
        self.out = out or sys.stdout
        self.width = width
        self.lines: list[str] = []

    def show(self, *lines: str) -> None:
        self.lines = [line[: self.width] for line in lines]
        self.out.write("\n".join(f"| {line}" for line in self.lines) + "\n")
        self.out.flush()

    def clear(self) -> None:
        self.lines = []


def _fit(text: str, width: int, encoding: str) -> bytes:
    """Encode and cut to ``width`` display cells without splitting a multi-byte character."""
    out = b""
    for ch in text:
        b = ch.encode(encoding, "replace")
        if len(out) + len(b) > width:
            break
        out += b
    return out.ljust(width, b" ")


class SerialPoleDisplay:
    INIT = b"\x1b\x40"
    CLEAR = b"\x0c"
    UPPER = b"\x1bQA"
    LOWER = b"\x1bQB"

    def __init__(self, url: str = "", *, baudrate: int = 9600, width: int = 20, encoding: str = "gb18030",
                 port: object = None) -> None:
        import serial

        try:
            self.port = port or serial.serial_for_url(url, baudrate=baudrate, timeout=1)
        except serial.SerialException as exc:
            raise DeviceError(f"customer display {url}: {exc}") from exc
        self.width = width
        self.encoding = encoding
        self._write(self.INIT)

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)  # type: ignore[attr-defined]
            self.port.flush()  # type: ignore[attr-defined]
        except OSError as exc:
            raise DeviceError(f"customer display: {exc}") from exc

    def show(self, *lines: str) -> None:
        if len(lines) > 2:
            raise ValueError("a pole display has two lines")
        data = self.CLEAR
        for cmd, text in zip((self.UPPER, self.LOWER), lines, strict=False):
            data += cmd + _fit(text, self.width, self.encoding) + b"\r"
        self._write(data)

    def clear(self) -> None:
        self._write(self.CLEAR)

    def close(self) -> None:
        self.port.close()  # type: ignore[attr-defined]
