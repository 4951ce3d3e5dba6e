"""Device interfaces of the terminal bridge (``typing.Protocol``) and the data they exchange.

Every device the terminal application uses is reached through one of these
protocols; each has a real driver (evdev, PC/SC, ESC/POS over TCP/serial/file,
pyserial, espeak-ng) and a software device for headless tests.  The application
never sees a clear PIN (only :class:`PinPad` returns an encrypted PIN block) and
never logs track data or PANs unmasked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class DeviceError(Exception):
    """A device failed or is not present (names the device)."""


class CardReadError(DeviceError):
    """A card could not be read: bad track format, bad LRC, chip error."""

    def __init__(self, msg: str, *, track: int | None = None, offset: int | None = None) -> None:
        parts = [msg]
        if track is not None:
            parts.append(f"track {track}")
        if offset is not None:
            parts.append(f"offset {offset}")
        super().__init__(": ".join(parts))
        self.track = track
        self.offset = offset


class EntryMode(enum.Enum):
    """Field 22 positions 1-2 (POS entry mode)."""

    KEYED = "01"
    MAGSTRIPE = "02"
    QR = "03"
    CHIP = "05"
    CONTACTLESS = "07"
    # a fallback swipe after a chip failure is MAGSTRIPE ("02") with 60.5 = "2"


@dataclass(frozen=True)
class Track1:
    pan: str = field(repr=False)
    name: str = field(repr=False)
    expiry: str  # YYMM
    service_code: str
    discretionary: str = field(repr=False)
    raw: str = field(repr=False)  # between sentinels, never logged


@dataclass(frozen=True)
class Track2:
    pan: str = field(repr=False)
    expiry: str  # YYMM
    service_code: str
    discretionary: str = field(repr=False)
    raw: str = field(repr=False)  # "PAN=YYMMSSS..." as field 35 carries it (``=`` is nibble D on the wire)

    @property
    def chip_card(self) -> bool:
        """Service code digit 1 of 2 or 6: the card has a chip, so a swipe is a fallback."""
        return self.service_code[:1] in ("2", "6")


@dataclass(frozen=True)
class SwipeData:
    """What a magstripe reader read from one swipe (``None`` for absent or failed tracks)."""

    track1: Track1 | None
    track2: Track2 | None
    track3: str | None
    failed_tracks: tuple[int, ...] = ()

    @property
    def pan(self) -> str:
        if self.track2 is not None:
            return self.track2.pan
        if self.track1 is not None:
            return self.track1.pan
        raise CardReadError("no PAN: neither track 1 nor track 2 was read")

    def __repr__(self) -> str:  # never print track data
        return f"SwipeData(pan=<masked>, tracks={[t for t in (1, 2, 3) if self._has(t)]})"

    def _has(self, n: int) -> bool:
        return (self.track1, self.track2, self.track3)[n - 1] is not None


@dataclass
class CardData:
    """What the terminal needs from any card for field 2/14/22/23/35/55."""

    entry_mode: EntryMode
    pan: str
    expiry: str  # YYMM
    track2: str | None = None  # "PAN=YYMM..." (tag 57 for chip, track 2 for swipe)
    psn: str | None = None  # "01" (tag 5F34), chip only
    icc_data: bytes | None = None  # field 55 (BER-TLV)
    aid: str | None = None
    app_label: str | None = None
    tags: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        from switch.logsafe import mask_pan

        return (f"CardData(entry_mode={self.entry_mode.name}, pan={mask_pan(self.pan)}, "
                f"aid={self.aid}, psn={self.psn})")


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class MagstripeReader(Protocol):
    async def read_swipe(self) -> SwipeData:
        """Wait for one swipe and return its parsed tracks (raises :class:`CardReadError`)."""
        ...


@runtime_checkable
class ApduTransport(Protocol):
    """A connection to one card (contact or contactless) that exchanges raw APDUs."""

    def transmit(self, apdu: bytes) -> bytes:
        """Send a C-APDU, return the R-APDU (data + SW1 SW2) exactly as the card answered."""
        ...

    def atr(self) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class PinPad(Protocol):
    async def get_pin_block(self, pan: str, *, amount_fen: int | None = None) -> bytes | None:
        """Prompt for a PIN; return the ISO 9564 format 0 block encrypted under the PIK (8 bytes),
        or ``None`` when the cardholder bypassed PIN entry."""
        ...


@runtime_checkable
class QrScanner(Protocol):
    async def read_code(self) -> str:
        """Wait for one scanned code (customer payment code) and return its text."""
        ...


@runtime_checkable
class QrDisplay(Protocol):
    def show_qr(self, payload: str, caption: str = "") -> None: ...


@runtime_checkable
class ReceiptPrinter(Protocol):
    def print_receipt(self, receipt: object, copies: Sequence[str] = ("merchant", "customer")) -> None: ...


@runtime_checkable
class TextDisplay(Protocol):
    def show(self, *lines: str) -> None: ...

    def clear(self) -> None: ...


@runtime_checkable
class Voice(Protocol):
    def say(self, prompt: str) -> None: ...


@dataclass(frozen=True)
class SelfTestResult:
    """One line of ``posswitch terminal diagnose``: device, ok flag, human detail."""

    device: str
    ok: bool
    detail: str = ""
