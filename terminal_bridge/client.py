"""The terminal's link to the switch: one short TCP connection per exchange, POS-dialect frames.

Like most dial-up-era POS applications ported to TCP, the terminal opens a connection, sends one
request (``LEN | TPDU | header | body``), reads one reply and closes.  The connect is retried
(``connect_retries``, ``retry_delay``) because nothing has been sent yet; once the request bytes
are written it is never re-sent: a missing answer is a :class:`NetworkError` with ``sent=True``
and the application reverses (reversal rules live in :mod:`terminal_bridge.app`).

Bodies are encoded and decoded with ``_fastcore.iso8583.Codec(POS_SPEC)``, frames with
``_fastcore.framing``; the MAC (MTI .. field 63) with ``_fastcore.crypto``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from _fastcore import crypto, framing, iso8583
from _fastcore.errors import FramingError
from _fastcore.spec import POS_SPEC
from switch.logsafe import kv

log = logging.getLogger(__name__)

DEFAULT_TPDU = bytes.fromhex("6000030000")
DEFAULT_HEADER = bytes.fromhex("603100311001")
_CODEC = iso8583.Codec(POS_SPEC)
MAX_FRAME = 4096


class NetworkError(Exception):
    """No usable answer from the switch.  ``sent`` tells whether the request reached the wire."""

    def __init__(self, msg: str, *, kind: str, sent: bool) -> None:
        super().__init__(msg)
        self.kind = kind  # connect / timeout / closed / framing
        self.sent = sent


class ReplyError(Exception):
    """The switch answered something that does not belong to the request (names the field)."""


def encode(doc: dict[str, str]) -> bytes:
    return bytes(_CODEC.encode(doc))


def decode(body: bytes) -> dict[str, str]:
    return _CODEC.decode(body)


def compute_mac(mak: bytes, algorithm: str, data: bytes) -> bytes:
    """Field 64 for ``data`` (MTI .. end of field 63) under the MAK."""
    if algorithm == "pos-ecb":
        return crypto.mac_pos_ecb(mak, data)
    if algorithm == "x9.19":
        return crypto.mac_x919(mak if len(mak) == 16 else mak * 2, data)
    if algorithm == "x9.9":
        return crypto.mac_x99(mak[:8], data)
    raise ValueError(f"unknown MAC algorithm {algorithm!r}")


def encode_maced(doc: dict[str, str], mak: bytes, algorithm: str) -> bytes:
    body = encode({**doc, "64": "0" * 16})
    return body[:-8] + compute_mac(mak, algorithm, body[:-8])


def mac_ok(body: bytes, mak: bytes, algorithm: str) -> bool:
    """True when the body's field 64 is the MAC of MTI .. field 63."""
    return crypto.mac_equal(compute_mac(mak, algorithm, body[:-8]), body[-8:])


@dataclass(slots=True)
class Reply:
    doc: dict[str, str]
    body: bytes
    header: bytes
    processing_request: str  # header digit 6: "3" = sign on again

    @property
    def rc(self) -> str:
        return self.doc.get("39", "")


class PosClient:
    """Exchanges one request for one reply with the switch."""

    def __init__(self, host: str, port: int, *, tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, connect_retries: int = 2,
                 retry_delay: float = 0.5) -> None:
        self.host, self.port = host, port
        self.tpdu, self.header = tpdu, header
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: Exception | None = None
        for attempt in range(self.connect_retries + 1):
            try:
                return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.connect_timeout)
            except (TimeoutError, OSError) as exc:
                last = exc
                log.warning("connect failed", extra=kv(host=self.host, port=self.port, attempt=attempt + 1,
                                                       error=type(exc).__name__))
                if attempt < self.connect_retries:
                    await asyncio.sleep(self.retry_delay)
        raise NetworkError(f"cannot connect to {self.host}:{self.port} ({type(last).__name__}: {last})",
                           kind="connect", sent=False)

    async def exchange(self, body: bytes) -> Reply:
        """Send one request body, return the reply (raises :class:`NetworkError`)."""
        reader, writer = await self._connect()
        sent = False
        try:
            writer.write(framing.build_frame(body, self.tpdu, self.header))
            await writer.drain()
            sent = True
            splitter = framing.FrameSplitter(MAX_FRAME, 1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.read_timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise NetworkError(f"no reply within {self.read_timeout:g} s", kind="timeout", sent=True)
                try:
                    data = await asyncio.wait_for(reader.read(4096), left)
                except TimeoutError:
                    raise NetworkError(f"no reply within {self.read_timeout:g} s", kind="timeout",
                                       sent=True) from None
                if not data:
                    raise NetworkError("connection closed by the switch before the reply", kind="closed", sent=True)
                try:
                    payloads = splitter.feed(data)
                    if not payloads:
                        continue
                    _tpdu, header, rbody = framing.split_payload(payloads[0])
                    doc = decode(rbody)
                except (FramingError, iso8583.DecodeError, ValueError) as exc:
                    raise NetworkError(f"bad reply frame: {exc}", kind="framing", sent=True) from None
                return Reply(doc, rbody, header, framing.get_request_digit(header))
        except OSError as exc:
            raise NetworkError(f"connection lost: {exc}", kind="closed", sent=sent) from None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def check_reply(req: dict[str, str], reply: Reply) -> None:
    """§6 checks: MTI = request + 10, same 3 / 11 / 41 (and 42, 4 when approved)."""
    want = f"{int(req['t']) + 10:04d}"
    doc = reply.doc
    if doc.get("t") != want:
        raise ReplyError(f"reply MTI {doc.get('t')} is not {want}")
    fields = ["3", "11", "41"] + (["42"] if reply.rc == "00" else [])
    for f in fields:
        if f in req and doc.get(f) is not None and doc.get(f) != req[f]:
            raise ReplyError(f"reply field {f} differs from the request")


__all__ = ["DEFAULT_HEADER", "DEFAULT_TPDU", "NetworkError", "PosClient", "Reply", "ReplyError", "check_reply",
           "compute_mac", "decode", "encode", "encode_maced", "mac_ok"]
