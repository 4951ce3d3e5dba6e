"""POS-dialect wire helpers used by the switch: spec selection, frame parts, field 60/61/48 helpers.

The switch decodes the body of each frame (MTI, bitmap, fields) with the POS dialect spec
(``_fastcore.spec.POS_SPEC`` when the dialect module is present, otherwise the equivalent table
below, built from ``pos-8583-dialect.md`` §3) through ``_fastcore.iso8583`` when available, else
pyiso8583 (the compiled codec is a drop-in replacement).  The spec is chosen once at import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from _fastcore import framing

try:  # the compiled codec (drop-in for pyiso8583)
    _codec = importlib.import_module("_fastcore.iso8583")
except ImportError:  # pragma: no cover - the codec lands separately
    import iso8583 as _codec

import iso8583 as _pyiso

DecodeError = _pyiso.DecodeError
EncodeError = _pyiso.EncodeError
# the compiled codec re-raises pyiso8583's classes; keep both just in case it grows its own
DECODE_ERRORS: tuple[type[BaseException], ...] = tuple(
    {DecodeError, getattr(_codec, "DecodeError", DecodeError), ValueError}
)


def _n(max_len: int, pad: str = "left_pad", desc: str = "") -> dict[str, Any]:
    """Fixed numeric, packed BCD, ``max_len`` digits."""
    spec: dict[str, Any] = {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": max_len,
                            "len_count": "nibbles", "desc": desc}
    if max_len % 2:
        spec[pad] = "0"
    return spec


def _nvar(len_type: int, max_len: int, desc: str = "") -> dict[str, Any]:
    """Variable numeric/track, BCD length counting digits, data left-aligned (trailing pad nibble)."""
    return {"data_enc": "b", "len_enc": "bcd", "len_type": len_type, "max_len": max_len,
            "len_count": "nibbles", "right_pad": "0", "desc": desc}


def _a(max_len: int, desc: str = "") -> dict[str, Any]:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": max_len, "desc": desc}


def _avar(len_type: int, max_len: int, desc: str = "") -> dict[str, Any]:
    return {"data_enc": "ascii", "len_enc": "bcd", "len_type": len_type, "max_len": max_len, "desc": desc}


def _b(max_len: int, desc: str = "") -> dict[str, Any]:
    return {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": max_len, "desc": desc}


def _bvar(len_type: int, max_len: int, desc: str = "") -> dict[str, Any]:
    return {"data_enc": "b", "len_enc": "bcd", "len_type": len_type, "max_len": max_len, "desc": desc}


_LOCAL_SPEC: dict[str, dict[str, Any]] = {
    "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": "no header"},
    "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI"},
    "p": _b(8, "bitmap"),
    "2": _nvar(1, 19, "PAN"),
    "3": _n(6, desc="processing code"),
    "4": _n(12, desc="amount"),
    "11": _n(6, desc="STAN"),
    "12": _n(6, desc="local time"),
    "13": _n(4, desc="local date"),
    "14": _n(4, desc="expiry"),
    "15": _n(4, desc="settlement date"),
    "22": _n(3, "right_pad", "POS entry mode"),
    "23": _n(3, desc="card sequence number"),
    "25": _n(2, desc="POS condition code"),
    "26": _n(2, desc="PIN capture code"),
    "32": _nvar(1, 11, "acquirer ID"),
    "35": _nvar(1, 37, "track 2"),
    "36": _nvar(2, 104, "track 3"),
    "37": _a(12, "RRN"),
    "38": _a(6, "auth code"),
    "39": _a(2, "response code"),
    "41": _a(8, "terminal ID"),
    "42": _a(15, "merchant ID"),
    "44": _avar(1, 25, "additional response"),
    "48": _nvar(2, 322, "additional data"),
    "49": _a(3, "currency"),
    "52": _b(8, "PIN data"),
    "53": _n(16, desc="security control"),
    "54": _avar(2, 20, "additional amounts"),
    "55": _bvar(2, 255, "ICC data"),
    "58": _bvar(2, 100, "e-purse"),
    "59": _avar(2, 999, "terminal info"),
    "60": _nvar(2, 19, "private 60 (n..17; 19 seen in the field)"),
    "61": _nvar(2, 29, "original data"),
    "62": _bvar(2, 512, "private 62"),
    "63": _avar(2, 163, "private 63"),
    "64": _b(8, "MAC"),
}

try:
    POS_SPEC: dict[str, dict[str, Any]] = importlib.import_module("_fastcore.spec").POS_SPEC
except (ImportError, AttributeError):  # pragma: no cover - until the dialect module lands
    POS_SPEC = _LOCAL_SPEC

TPDU_LEN = 5
HEADER_LEN = 6
PREFIX_LEN = TPDU_LEN + HEADER_LEN


if hasattr(_codec, "Codec"):  # the compiled codec bound once to the spec: no per-message spec work
    _POS = _codec.Codec(POS_SPEC)
    decode = _POS.decode
    encode = _POS.encode
else:  # pragma: no cover - plain pyiso8583

    def decode(body: bytes | bytearray) -> dict[str, str]:
        doc, _ = _codec.decode(body, POS_SPEC)
        return doc

    def encode(doc: dict[str, str]) -> bytes:
        raw, _ = _codec.encode(doc, POS_SPEC)
        return bytes(raw)


@dataclass(slots=True)
class Frame:
    """One frame without its length prefix: TPDU, header and the ISO 8583 body."""

    tpdu: bytes
    header: bytes
    body: bytes

    @classmethod
    def parse(cls, payload: bytes) -> Frame:
        if len(payload) < PREFIX_LEN + 10:
            raise ValueError(f"frame too short: {len(payload)} bytes, offset 0")
        if payload[0] != 0x60:
            raise ValueError(f"TPDU id {payload[0]:02X} is not 60: offset 2")
        return cls(payload[:TPDU_LEN], payload[TPDU_LEN:PREFIX_LEN], payload[PREFIX_LEN:])


#: reply TPDU: destination and originator addresses swapped
swap_tpdu = framing.swap_tpdu


def reply_header(header: bytes, processing_request: int = 0) -> bytes:
    """Echo the request header with digit 6 (processing request) set by the host."""
    return framing.set_request_digit(header, processing_request)


def frame_bytes(tpdu: bytes, header: bytes, body: bytes) -> bytes:
    """``LEN + tpdu + header + body`` (``_fastcore.framing.build_frame``)."""
    return framing.build_frame(body, tpdu, header)


#: (request TPDU, request header, processing request) -> reply TPDU + reply header
_REPLY_PREFIXES: dict[tuple[bytes, bytes, int], bytes] = {}
_REPLY_PREFIXES_MAX = 4096


def reply_frame(tpdu: bytes, header: bytes, processing_request: int, body: bytes) -> bytes:
    """``frame_bytes(swap_tpdu(tpdu), reply_header(header, processing_request), body)``.

    A terminal sends the same TPDU and header on every request: the reply TPDU and header are
    built once per (TPDU, header, digit 6) and cached (bounded).
    """
    key = (tpdu, header, processing_request)
    prefix = _REPLY_PREFIXES.get(key)
    if prefix is None:
        prefix = swap_tpdu(tpdu) + reply_header(header, processing_request)
        if len(_REPLY_PREFIXES) >= _REPLY_PREFIXES_MAX:
            _REPLY_PREFIXES.clear()
        _REPLY_PREFIXES[key] = prefix
    n = len(prefix) + len(body)
    if n > 0xFFFF:  # too long: the general form raises its error
        return frame_bytes(swap_tpdu(tpdu), reply_header(header, processing_request), body)
    return n.to_bytes(2, "big") + prefix + body


def mac_input(body: bytes) -> bytes:
    """MAC input of an encoded body whose last field is 64: MTI .. end of field 63."""
    return body[:-8]


# ---------------------------------------------------------------- field 60 / 61 / 48 helpers

@dataclass(slots=True)
class Field60:
    txn_type: str = "00"
    batch: str = "000000"
    nmi: str = "000"
    rest: str = ""  # 60.4 .. 60.7 as sent

    @classmethod
    def parse(cls, value: str | None) -> Field60:
        v = value or ""
        return cls(v[0:2] or "00", (v[2:8] or "000000").ljust(6, "0"), (v[8:11] or "000"), v[11:])

    def __str__(self) -> str:
        return f"{self.txn_type}{self.batch}{self.nmi}{self.rest}"

    @property
    def contactless(self) -> bool:
        return self.rest[:1] == "6"


@dataclass(slots=True)
class Field61:
    orig_batch: str
    orig_trace: str
    orig_date: str = ""

    @classmethod
    def parse(cls, value: str | None) -> Field61 | None:
        if not value or len(value) < 12:
            return None
        return cls(value[0:6], value[6:12], value[12:16])


def pan_of(doc: dict[str, str]) -> str | None:
    """PAN from field 2, else from track 2 (field 35, separator D/=)."""
    pan = doc.get("2")
    if pan:
        return pan
    t2 = doc.get("35")
    if t2:
        for sep in ("D", "="):
            if sep in t2:
                return t2.split(sep, 1)[0]
        return t2[:19]
    return None


def settlement_totals_48(value: str) -> list[tuple[int, int, int, int]]:
    """Field 48 of a 0500: [(debit_amount, debit_count, credit_amount, credit_count)] for domestic, foreign."""
    out = []
    for off in (0, 31):
        part = value[off:off + 30]
        if len(part) < 30:
            raise ValueError(f"field 48 settlement totals too short at offset {off}")
        out.append((int(part[0:12]), int(part[12:15]), int(part[15:27]), int(part[27:30])))
    return out


def settlement_reply_48(value: str, domestic_ok: bool, foreign_ok: bool) -> str:
    v = value.ljust(62, "0")
    return v[:30] + ("1" if domestic_ok else "2") + v[31:61] + ("1" if foreign_ok else "2")
