"""Contactless over simulated RF: nfcpy's ``udp:`` driver on both sides, loopback only.

* :class:`NfcUdpCard` makes a card object (``process(apdu)``) a Type 4A (ISO-DEP)
  target: it answers the NFC-A anti-collision (inside nfcpy), RATS with an ATS,
  and I-blocks (with chaining), R(ACK/NAK) and S(DESELECT) blocks itself.
* :class:`NfcUdpTransport` is the reader: ``clf.connect(rdwr=...)`` finds and
  activates the tag; ``transmit`` is ``tag.transceive`` - an ``ApduTransport``
  the EMV kernel drives with ``contactless=True`` like any PC/SC reader.

nfcpy's stock udp driver binds ``0.0.0.0``; the subclasses here bind 127.0.0.1.
Needs the optional ``nfcpy`` package (pure Python).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from switch.logsafe import kv

from ..apdu import CardApplet
from ..devices import CardReadError

log = logging.getLogger(__name__)

# ATS: TL=5, T0=78 (TA TB TC present, FSCI 8 = 256 bytes), TA=80, TB=E0 (FWI 14 ~ 4.9 s), TC=00 (no CID/NAD)
ATS = bytes.fromhex("0578 80E000")
FSD = 256


def _nfc():
    try:
        import nfc
        import nfc.clf
        import nfc.clf.udp
        import nfc.tag
    except ImportError as exc:  # optional dependency
        raise CardReadError("contactless (udp): the nfcpy package is not installed") from exc
    return nfc


def _loopback_device_classes():
    nfc = _nfc()
    base = nfc.clf.udp.Device

    class CardSide(base):  # type: ignore[misc, valid-type]
        def _bind_socket(self, time_to_return: float) -> bool:
            if self.socket.getsockname()[1] == self.addr[1]:
                return True  # still bound from the previous listen period
            try:
                self.socket.bind(("127.0.0.1", self.addr[1]))
                return True
            except OSError:
                return False

    class ReaderSide(base):  # type: ignore[misc, valid-type]
        def _create_socket(self) -> None:
            if self.socket is None:
                super()._create_socket()
                self.socket.bind(("127.0.0.1", 0))

    return CardSide, ReaderSide


class NfcUdpCard:
    """Serve ``card`` as an ISO-DEP tag on udp 127.0.0.1:``port`` in a daemon thread."""

    def __init__(self, card: CardApplet, port: int, *, uid: bytes | None = None, fsci: int = 8) -> None:
        self.card = card
        self.ats = bytes([0x05, 0x70 | (fsci & 0x0F)]) + ATS[2:]  # FSCI < 8 makes the reader chain commands
        self.port = port
        self.uid = uid or (b"\x08" + os.urandom(3))  # random NFCID1, as payment cards use
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sessions = 0

    def start(self) -> NfcUdpCard:
        nfc = _nfc()
        card_side, _ = _loopback_device_classes()
        self._dev = card_side("127.0.0.1", self.port)
        self._target = nfc.clf.LocalTarget("106A", sens_res=bytearray.fromhex("0400"),
                                           sdd_res=bytearray(self.uid), sel_res=bytearray.fromhex("20"))
        self._thread = threading.Thread(target=self._run, name=f"nfc-card-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        nfc = _nfc()
        restart: tuple[str, bytearray, object] | None = None
        while not self._stop.is_set():
            try:
                if restart is not None:  # a new poll arrived mid-session: answer it at once
                    target = self._dev._listen_tta(self._target, time.time() + 0.5, init=restart)
                    restart = None
                else:
                    target = self._dev.listen_tta(self._target, 0.5)
            except nfc.clf.CommunicationError:
                continue
            if target is None or getattr(target, "tt4_cmd", None) is None:
                continue
            rats = bytes(target.tt4_cmd)
            if rats[:1] != b"\xe0":
                continue
            self.sessions += 1
            self.card.reset()
            try:
                poll = self._session(target)
            except nfc.clf.CommunicationError as exc:  # RF off, reader gone
                log.debug("contactless session ended", extra=kv(reason=type(exc).__name__))
                poll = None
            if poll is not None:
                restart = ("106A", bytearray(poll), target._addr)
            else:
                self._dev.mute()  # new socket for the next field-on

    def _session(self, target: object) -> bytes | None:
        """Run ISO-DEP until DESELECT / RF off (returns None) or a new REQA/WUPA poll (returns it)."""
        nfc = _nfc()
        fsd = (16, 24, 32, 40, 48, 64, 96, 128, 256)[min(bytes(target.tt4_cmd)[1] >> 4, 8)]  # type: ignore[attr-defined]
        rsp: bytes | None = self.ats
        last: bytes = self.ats
        pending = bytearray()  # command chaining
        out_chunks: list[bytes] = []  # response chaining
        while not self._stop.is_set():
            try:
                cmd = self._dev.send_rsp_recv_cmd(target, bytearray(rsp) if rsp is not None else None, 0.5)
            except nfc.clf.TimeoutError:
                rsp = None
                continue
            if cmd is None:
                return None
            cmd = bytes(cmd)
            if cmd in (b"\x26", b"\x52"):  # the reader lost us (e.g. ATS too late) and polls again
                return cmd
            pcb = cmd[0]
            if pcb & 0xE2 == 0x02:  # I-block
                block = pcb & 0x01
                pending += cmd[1:]
                if pcb & 0x10:  # chaining: acknowledge, wait for more
                    rsp = last = bytes([0xA2 | block])
                    continue
                answer = self.card.process(bytes(pending))
                pending.clear()
                size = fsd - 3
                out_chunks = [answer[i : i + size] for i in range(0, len(answer), size)] or [b""]
                first = out_chunks.pop(0)
                rsp = last = bytes([(0x12 if out_chunks else 0x02) | block]) + first
            elif pcb & 0xE6 == 0xA2:  # R-block
                if pcb & 0x10 or (pcb & 0x01) == (last[0] & 0x01):  # NAK, or ACK for our last block: resend
                    rsp = last
                elif out_chunks:  # ACK for a chained response: next chunk
                    block = pcb & 0x01
                    chunk = out_chunks.pop(0)
                    rsp = last = bytes([(0x12 if out_chunks else 0x02) | block]) + chunk
                else:
                    rsp = last
            elif pcb & 0xF7 == 0xC2:  # S(DESELECT)
                self._dev.send_rsp_recv_cmd(target, bytearray([pcb]), 0)
                return None
            else:
                rsp = None  # unknown block: stay silent, the reader retries
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._dev.close()
        except OSError:
            pass


class NfcUdpTransport:
    """Reader side: find and activate the tag on udp 127.0.0.1:``port``; ``transmit`` exchanges APDUs."""

    def __init__(self, port: int, *, wait: float = 3.0, timeout: float = 2.0) -> None:
        """Poll for a card for up to ``wait`` seconds; ``timeout`` bounds each APDU exchange."""
        nfc = _nfc()
        _, reader_side = _loopback_device_classes()
        self._clf = nfc.ContactlessFrontend()
        self._clf.device = reader_side("127.0.0.1", port)
        self.timeout = timeout
        deadline = time.monotonic() + wait
        tag = None
        while tag is None and time.monotonic() < deadline:  # RATS must be answered within 30 ms: retry
            try:
                tag = self._clf.connect(
                    rdwr={"targets": ["106A"], "on-connect": lambda t: False, "iterations": 1,
                          "interval": 0.05, "beep-on-connect": False},
                    terminate=lambda: time.monotonic() > deadline)
            except Exception as exc:  # noqa: BLE001 - nfcpy raises several kinds during activation
                log.debug("contactless activation failed", extra=kv(reason=repr(exc)))
                tag = None
            if not (tag and hasattr(tag, "transceive")):
                tag = None
        if tag is None:
            self.close()
            raise CardReadError(f"contactless: no ISO-DEP card on udp 127.0.0.1:{port}")
        self._tag = tag
        self._uid = bytes(tag.identifier)

    def transmit(self, apdu: bytes) -> bytes:
        nfc = _nfc()
        try:
            return bytes(self._tag.transceive(bytearray(apdu), timeout=self.timeout))
        except nfc.tag.TagCommandError as exc:
            raise CardReadError(f"contactless: card lost ({exc})") from exc

    def atr(self) -> bytes:
        return self._uid  # no ATR in contactless; the UID identifies the card

    def close(self) -> None:
        self._clf.close()
