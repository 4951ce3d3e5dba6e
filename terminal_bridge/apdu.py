"""APDU transports (in-process and PC/SC) and T=0 response handling.

:func:`exchange` is what the EMV kernel calls: it sends a C-APDU and returns
``(data, sw)`` after resolving T=0 status words (``61xx`` -> GET RESPONSE with
Le = xx, repeated; ``6Cxx`` -> resend with Le = xx).

Transports follow :class:`terminal_bridge.devices.ApduTransport`:

* :class:`DirectTransport` wraps a card object in process (``process(apdu)``),
  used when pcscd/vpcd are not installed;
* :class:`PcscTransport` opens a reader through pyscard (pcscd), contact or
  contactless - the same APDUs either way.
"""

from __future__ import annotations

import logging
from typing import Protocol

from switch.logsafe import kv

from .devices import CardReadError

log = logging.getLogger(__name__)


class CardApplet(Protocol):
    def process(self, apdu: bytes) -> bytes: ...

    def atr(self) -> bytes: ...

    def reset(self) -> bytes: ...


class ApduError(CardReadError):
    """The card answered a command with an error status word."""

    def __init__(self, command: str, sw: bytes) -> None:
        super().__init__(f"{command} failed with SW {sw.hex().upper()}")
        self.command = command
        self.sw = sw


class DirectTransport:
    """A card object reached in process, with the same interface as a reader."""

    def __init__(self, card: CardApplet) -> None:
        self.card = card
        self._atr = card.reset()

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.process(bytes(apdu))

    def atr(self) -> bytes:
        return self._atr

    def close(self) -> None:
        pass


def list_readers() -> list[str]:
    """Reader names pcscd knows (empty if pcscd is not running or pyscard is missing)."""
    try:
        from smartcard.System import readers
    except ImportError:
        return []
    try:
        return [str(r) for r in readers()]
    except Exception:  # noqa: BLE001 - pcscd down: no readers
        return []


class PcscTransport:
    """A card in a PC/SC reader (pyscard).  ``reader`` is a substring of the reader name."""

    def __init__(self, reader: str = "", *, protocol: str = "any") -> None:
        try:
            from smartcard.CardConnection import CardConnection
            from smartcard.Exceptions import CardConnectionException, NoCardException
            from smartcard.System import readers
        except ImportError as exc:
            raise CardReadError("PC/SC: pyscard is not installed (pip install pyscard)") from exc
        try:
            found = [r for r in readers() if reader in str(r)]
        except Exception as exc:  # noqa: BLE001 - pcscd not running
            raise CardReadError(f"PC/SC: cannot list readers ({exc})") from exc
        if not found:
            raise CardReadError(f"PC/SC: no reader matching {reader!r}")
        self.reader_name = str(found[0])
        proto = {"t0": CardConnection.T0_protocol, "t1": CardConnection.T1_protocol,
                 "any": CardConnection.T0_protocol | CardConnection.T1_protocol}[protocol]
        self._conn = found[0].createConnection()
        try:
            self._conn.connect(proto)
        except (NoCardException, CardConnectionException) as exc:
            raise CardReadError(f"PC/SC: no card in {self.reader_name} ({exc})") from exc
        log.info("card connected", extra=kv(reader=self.reader_name, atr=bytes(self._conn.getATR()).hex()))

    def transmit(self, apdu: bytes) -> bytes:
        data, sw1, sw2 = self._conn.transmit(list(apdu))
        return bytes(data) + bytes([sw1, sw2])

    def atr(self) -> bytes:
        return bytes(self._conn.getATR())

    def close(self) -> None:
        for step in ("disconnect", "release"):  # release the PC/SC context now, not in __del__
            try:
                getattr(self._conn, step, lambda: None)()
            except Exception:  # noqa: BLE001 - already gone
                pass


def exchange(transport: object, apdu: bytes, *, max_chain: int = 16) -> tuple[bytes, bytes]:
    """Send ``apdu``; follow ``61xx`` / ``6Cxx``; return ``(data, sw)`` with ``sw`` the final status."""
    resp = transport.transmit(apdu)  # type: ignore[attr-defined]
    if len(resp) < 2:
        raise CardReadError(f"card answer of {len(resp)} bytes has no status word")
    data, sw = resp[:-2], resp[-2:]
    if sw[0] == 0x6C:  # wrong Le: resend with the length the card wants
        resp = transport.transmit(_without_le(apdu) + bytes([sw[1]]))  # type: ignore[attr-defined]
        data, sw = resp[:-2], resp[-2:]
    chunks = [data]
    n = 0
    while sw[0] == 0x61:
        n += 1
        if n > max_chain:
            raise CardReadError("card keeps answering 61xx")
        resp = transport.transmit(bytes([0x00, 0xC0, 0x00, 0x00, sw[1]]))  # type: ignore[attr-defined]
        chunks.append(resp[:-2])
        sw = resp[-2:]
    return b"".join(chunks), sw


def _without_le(apdu: bytes) -> bytes:
    """The command header and data of a short APDU, its Le (if any) removed."""
    body = apdu[4:]
    if len(body) == 1 or (len(body) >= 2 and len(body) == 2 + body[0]):
        return apdu[:-1]
    return bytes(apdu)


def _reader_name(reader: str) -> str:
    names = [r for r in list_readers() if reader in r]
    if not names:
        raise CardReadError(f"PC/SC: no reader matching {reader!r}")
    return names[0]


def _wait_state(reader: str, present: bool, timeout: float) -> bool:
    """Block (SCardGetStatusChange) until the reader has / has no card; False on timeout."""
    import time

    from smartcard import scard

    name = _reader_name(reader)
    hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise CardReadError(f"PC/SC: no context ({scard.SCardGetErrorMessage(hresult)})")
    try:
        state = scard.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            hresult, states = scard.SCardGetStatusChange(ctx, left_ms, [(name, state)])
            if hresult == scard.SCARD_E_TIMEOUT:
                return False
            if hresult != scard.SCARD_S_SUCCESS:
                raise CardReadError(f"PC/SC: {name}: {scard.SCardGetErrorMessage(hresult)}")
            state = states[0][1] & ~scard.SCARD_STATE_CHANGED
            if bool(state & scard.SCARD_STATE_PRESENT) == present:
                return True
            if time.monotonic() >= deadline:
                return False
    finally:
        scard.SCardReleaseContext(ctx)


def wait_for_card(reader: str = "", timeout: float = 30.0, *, protocol: str = "any") -> PcscTransport:
    """Wait for a card in the first reader matching ``reader`` and connect to it."""
    if not _wait_state(reader, True, timeout):
        raise CardReadError(f"PC/SC: no card inserted within {timeout:g} s")
    return PcscTransport(reader, protocol=protocol)


def wait_for_removal(reader: str = "", timeout: float = 30.0) -> bool:
    """Wait until the card is taken out ("请拔卡"); False if it is still there after ``timeout``."""
    return _wait_state(reader, False, timeout)
