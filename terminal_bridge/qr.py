"""QR scanners (customer payment codes) and QR displays (customer scans the merchant's code).

Scanners:

* :class:`WedgeQrScanner`: lines or key events pushed by tests or a scripted terminal
  (the same key-event decoder as the magstripe reader);
* :class:`EvdevQrScanner`: a keyboard-wedge scanner on ``/dev/input/event*``;
* :class:`SerialQrScanner`: a USB-CDC / RS-232 scanner through pyserial (any
  ``serial_for_url`` URL: ``/dev/ttyACM0``, ``loop://`` in tests).

:func:`classify_payment_code` tells WeChat Pay / Alipay / UnionPay C2B codes apart
by prefix and length (pos-8583-dialect.md §13).

Display: :class:`SegnoQrDisplay` renders with segno, to the console (text) and
optionally to a PNG file for a customer-facing screen.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import segno

from switch.logsafe import kv

from .devices import DeviceError
from .magstripe import KeycodeDecoder

log = logging.getLogger(__name__)


class QrCodeError(DeviceError):
    """A scanned code is empty, malformed or not a payment code we accept."""


def classify_payment_code(code: str) -> str:
    """``"wechat"`` (18 digits, 10-15), ``"alipay"`` (16-24 digits, 25-30), ``"unionpay"`` (19 digits, 62)."""
    if not code.isdigit():
        raise QrCodeError(f"payment code must be digits (got {len(code)} characters)")
    n, p = len(code), int(code[:2])
    if n == 18 and 10 <= p <= 15:
        return "wechat"
    if 16 <= n <= 24 and 25 <= p <= 30:
        return "alipay"
    if n == 19 and p == 62:
        return "unionpay"
    raise QrCodeError(f"unknown payment code: {n} digits, prefix {code[:2]}")


def _clean(line: str) -> str:
    code = line.strip().strip("\x00")
    if not code:
        raise QrCodeError("empty scan")
    return code


class WedgeQrScanner:
    def __init__(self) -> None:
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._decoder = KeycodeDecoder()

    def feed(self, line: str) -> None:
        self._lines.put_nowait(line)

    def feed_keys(self, events: Iterable[tuple[int, int]]) -> None:
        for code, value in events:
            line = self._decoder.feed(code, value)
            if line is not None:
                self._lines.put_nowait(line)

    async def read_code(self) -> str:
        code = _clean(await self._lines.get())
        log.info("code scanned", extra=kv(length=len(code)))
        return code


class EvdevQrScanner:
    """A keyboard-wedge QR scanner on ``/dev/input/event*`` (evdev, grabbed)."""

    def __init__(self, device_path: str, *, grab: bool = True) -> None:
        from .magstripe import EvdevLines

        self._lines = EvdevLines(device_path, what="QR scanner", grab=grab, error=QrCodeError)

    async def read_code(self) -> str:
        code = _clean(await self._lines.read_line())
        log.info("code scanned", extra=kv(length=len(code)))
        return code

    def close(self) -> None:
        self._lines.close()


class SerialQrScanner:
    """Reads CR/LF-terminated codes from a serial scanner."""

    def __init__(self, url: str, *, baudrate: int = 9600, timeout: float = 0.2, port: object = None) -> None:
        import serial

        try:
            self.port = port or serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
        except serial.SerialException as exc:
            raise DeviceError(f"QR scanner {url}: {exc}") from exc
        self._buf = bytearray()
        self._closed = False

    def _read_line(self, deadline: float | None) -> str:
        while not self._closed:
            if deadline is not None and time.monotonic() > deadline:
                raise QrCodeError("no code scanned in time")
            for sep in (b"\r", b"\n"):
                i = self._buf.find(sep)
                if i >= 0:
                    line, self._buf = bytes(self._buf[:i]), self._buf[i + 1 :]
                    if line.strip():
                        return line.decode("utf-8", "replace")
            chunk = self.port.read(64)  # type: ignore[attr-defined]
            if chunk:
                self._buf += chunk
        raise QrCodeError("scanner closed")

    async def read_code(self, timeout: float | None = None) -> str:
        """Next code; ``timeout`` seconds without one raise :class:`QrCodeError` (the read thread stops too)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        code = _clean(await asyncio.to_thread(self._read_line, deadline))
        log.info("code scanned", extra=kv(length=len(code)))
        return code

    def close(self) -> None:
        self._closed = True
        self.port.close()  # type: ignore[attr-defined]


class SegnoQrDisplay:
    """Shows merchant-presented codes: console text rendering and/or a PNG for a second screen."""

    def __init__(self, out: TextIO | None = None, png_path: str | Path | None = None, *, scale: int = 6) -> None:
        self.out = out or sys.stdout
        self.png_path = Path(png_path) if png_path else None
        self.scale = scale
        self.last_payload: str | None = None

    @staticmethod
    def make(payload: str) -> segno.QRCode:
        if not payload:
            raise QrCodeError("empty QR payload")
        return segno.make(payload, error="m", micro=False)

    def render_text(self, payload: str) -> str:
        buf = io.StringIO()
        self.make(payload).terminal(out=buf, compact=True)
        return buf.getvalue()

    def png_bytes(self, payload: str) -> bytes:
        buf = io.BytesIO()
        self.make(payload).save(buf, kind="png", scale=self.scale, border=4)
        return buf.getvalue()

    def show_qr(self, payload: str, caption: str = "") -> None:
        text = self.render_text(payload)
        if caption:
            self.out.write(caption + "\n")
        self.out.write(text)
        self.out.flush()
        if self.png_path is not None:
            self.png_path.write_bytes(self.png_bytes(payload))
        self.last_payload = payload
