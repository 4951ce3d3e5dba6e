"""Structured sub-fields of the POS dialect: parse and build helpers (pure Python, no I/O).

The codec (``POS_SPEC``) hands fields over as strings: digits for BCD fields, hex for binary
fields, text for ASCII/GBK fields.  These helpers turn the structured ones into small
dataclasses and back (reference ``pos-8583-dialect.md`` §5-§9):

* field 60 (:class:`Field60`): 60.1 type, 60.2 batch, 60.3 network mgmt code, 60.4-60.7;
* field 61 (:class:`Field61`): original batch, trace, date (+ private rest);
* field 48: settlement totals (:class:`SettlementHalf`, n62) and batch-upload records;
* field 62: sign-on working keys (:class:`WorkingKeys`, layouts 001/003/004);
* field 54: balance (:class:`Balance`); field 63: card org + reply texts (:class:`Field63`);
* field 53 security control, field 22 entry mode, track data ``=`` <-> ``D``.

Every ``parse_*`` raises :class:`FieldFormatError` naming the field and the offset of the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._compat import implementation_of, load
from .errors import FastcoreError

#: the fast scan of :func:`check_numeric_fields`: compiled twin ``_fields`` or pure ``_fields_py``
_impl = load("fields")
IMPLEMENTATION: str = implementation_of(_impl)
_numeric_ok = _impl.numeric_ok

__all__ = [
    "FieldFormatError",
    "Field60",
    "parse_field60",
    "build_field60",
    "Field61",
    "parse_field61",
    "build_field61",
    "SettlementHalf",
    "MAX_SETTLEMENT_COUNT",
    "parse_settlement_totals",
    "build_settlement_totals",
    "settlement_result",
    "BatchRecord",
    "parse_batch_upload",
    "build_batch_upload",
    "WorkingKeys",
    "parse_working_keys",
    "build_working_keys",
    "KEY_LAYOUT_LENGTHS",
    "Balance",
    "parse_balance",
    "build_balance",
    "Field63",
    "parse_field63",
    "build_field63",
    "build_field53",
    "parse_entry_mode",
    "track_to_wire",
    "track_from_wire",
    "tdk_block",
    "tdk_replace",
    "check_numeric_fields",
    "IMPLEMENTATION",
]


class FieldFormatError(FastcoreError):
    """A structured field does not follow its layout; names the field and the offset."""

    def __init__(self, field: str, msg: str, offset: int | None = None) -> None:
        text = f"field {field}: {msg}" + ("" if offset is None else f" at offset {offset}")
        super().__init__(text)
        self.field = field
        self.offset = offset


def _digits(field: str, value: str, offset: int = 0) -> None:
    for i, ch in enumerate(value):
        if not "0" <= ch <= "9":
            raise FieldFormatError(field, f"non-digit {ch!r}", offset + i)


def _num(field: str, value: int | str, width: int, name: str) -> str:
    text = str(value) if isinstance(value, int) else value
    if isinstance(value, int):
        if value < 0:
            raise FieldFormatError(field, f"{name} must not be negative: {value}")
        text = f"{value:0{width}d}"
    if len(text) != width or not text.isdigit():
        raise FieldFormatError(field, f"{name} must be {width} digits, got {text!r}")
    return text


# ----------------------------------------------------------------------------------- field 60

#: (attribute, width) of 60.1 .. 60.7 in order.
_F60_LAYOUT: tuple[tuple[str, int], ...] = (
    ("type_code", 2),
    ("batch", 6),
    ("network_code", 3),
    ("read_capability", 1),
    ("ic_condition", 1),
    ("partial_approval", 1),
    ("account_type", 3),
)


@dataclass(frozen=True, slots=True)
class Field60:
    """Field 60 (n..17 LLLVAR, BCD left-aligned).  Absent trailing sub-fields are ``None``.

    ``rest`` keeps acquirer-private digits after 60.7 (MAC-1 carries 19 digits) so a parse/build
    round trip is exact.
    """

    type_code: str  # 60.1 n2
    batch: str  # 60.2 n6
    network_code: str | None = None  # 60.3 n3
    read_capability: str | None = None  # 60.4 n1: 5 contact chip, 6 contactless used
    ic_condition: str | None = None  # 60.5 n1: 0 normal, 2 fallback
    partial_approval: str | None = None  # 60.6 n1: 1 = supported
    account_type: str | None = None  # 60.7 n3
    rest: str = ""

    @property
    def batch_number(self) -> int:
        return int(self.batch)

    def to_str(self) -> str:
        """Back to the field's digits (``build_field60`` of the same sub-fields)."""
        return build_field60(self.type_code, self.batch, self.network_code, self.read_capability,
                             self.ic_condition, self.partial_approval, self.account_type, self.rest)


def parse_field60(value: str) -> Field60:
    """Parse field 60 digits; at least 60.1 + 60.2 (8 digits) must be present."""
    _digits("60", value)
    if len(value) < 8:
        raise FieldFormatError("60", f"{len(value)} digits, need at least 8 (60.1 type + 60.2 batch)", len(value))
    parts: dict[str, str | None] = {}
    pos = 0
    for name, width in _F60_LAYOUT:
        if pos >= len(value):
            parts[name] = None
            continue
        if pos + width > len(value):
            raise FieldFormatError("60", f"sub-field {name} truncated ({len(value) - pos} of {width} digits)", pos)
        parts[name] = value[pos : pos + width]
        pos += width
    return Field60(rest=value[pos:], **parts)  # type: ignore[arg-type]


def build_field60(type_code: str, batch: int | str, network_code: str | None = None,
                  read_capability: str | None = None, ic_condition: str | None = None,
                  partial_approval: str | None = None, account_type: str | None = None,
                  rest: str = "") -> str:
    """Field 60 digits from its sub-fields; stops at the first ``None`` (later ones must be ``None``)."""
    values = (type_code, batch, network_code, read_capability, ic_condition, partial_approval, account_type)
    out: list[str] = []
    ended = False
    for (name, width), val in zip(_F60_LAYOUT, values, strict=True):
        if val is None:
            ended = True
            continue
        if ended:
            raise FieldFormatError("60", f"{name} given but an earlier sub-field is missing")
        out.append(_num("60", val, width, name))
    if rest:
        if ended:
            raise FieldFormatError("60", "rest given but 60.7 is missing")
        _digits("60", rest, 17)
        out.append(rest)
    return "".join(out)


# ----------------------------------------------------------------------------------- field 61


@dataclass(frozen=True, slots=True)
class Field61:
    """Field 61 original message data: orig batch n6 + orig trace n6 [+ orig date MMDD] [+ rest]."""

    orig_batch: str
    orig_trace: str
    orig_date: str | None = None  # MMDD
    rest: str = ""  # auth mode / institution of offline uploads, kept verbatim

    def to_str(self) -> str:
        return build_field61(self.orig_batch, self.orig_trace, self.orig_date, self.rest)


def parse_field61(value: str) -> Field61:
    _digits("61", value)
    if len(value) < 12:
        raise FieldFormatError("61", f"{len(value)} digits, need at least 12 (orig batch + trace)", len(value))
    if len(value) == 12:
        return Field61(value[:6], value[6:12])
    if len(value) < 16:
        raise FieldFormatError("61", "original date truncated", 12)
    return Field61(value[:6], value[6:12], value[12:16], value[16:])


def build_field61(orig_batch: int | str, orig_trace: int | str, orig_date: str | None = None,
                  rest: str = "") -> str:
    out = _num("61", orig_batch, 6, "orig_batch") + _num("61", orig_trace, 6, "orig_trace")
    if orig_date is not None:
        out += _num("61", orig_date, 4, "orig_date")
    elif rest:
        raise FieldFormatError("61", "rest given without orig_date")
    if rest:
        _digits("61", rest, 16)
        out += rest
    return out


# ----------------------------------------------------------------------------------- field 48


@dataclass(frozen=True, slots=True)
class SettlementHalf:
    """One half (domestic or foreign) of the 0500/0510 field 48 totals (31 digits)."""

    debit_amount: int = 0  # fen, n12
    debit_count: int = 0  # n3
    credit_amount: int = 0  # fen, n12
    credit_count: int = 0  # n3
    result: str = "0"  # n1: 0 in requests; 1 balanced, 2 not balanced, 3 error in replies


_HALF = 31
#: the most debits (or credits) one half of field 48 can count: 3 digits
MAX_SETTLEMENT_COUNT = 999


def _parse_half(value: str, base: int) -> SettlementHalf:
    v = value[base : base + _HALF]
    return SettlementHalf(int(v[0:12]), int(v[12:15]), int(v[15:27]), int(v[27:30]), v[30])


def parse_settlement_totals(value: str) -> tuple[SettlementHalf, SettlementHalf]:
    """Field 48 of 0500/0510 (n62) -> ``(domestic, foreign)``."""
    _digits("48", value)
    if len(value) != 2 * _HALF:
        raise FieldFormatError("48", f"settlement totals must be 62 digits, got {len(value)}", min(len(value), 62))
    return _parse_half(value, 0), _parse_half(value, _HALF)


def _build_half(h: SettlementHalf) -> str:
    return (_num("48", h.debit_amount, 12, "debit_amount") + _num("48", h.debit_count, 3, "debit_count")
            + _num("48", h.credit_amount, 12, "credit_amount") + _num("48", h.credit_count, 3, "credit_count")
            + _num("48", h.result, 1, "result"))


def build_settlement_totals(domestic: SettlementHalf, foreign: SettlementHalf) -> str:
    """``(domestic, foreign)`` -> field 48 digits (n62)."""
    return _build_half(domestic) + _build_half(foreign)


def settlement_result(value: str, domestic: str, foreign: str) -> str:
    """Copy of a request's field 48 with the result digits (offsets 30 and 61) set, for the 0510."""
    parse_settlement_totals(value)
    for r in (domestic, foreign):
        if r not in ("0", "1", "2", "3"):
            raise FieldFormatError("48", f"result must be 0..3, got {r!r}")
    return value[:30] + domestic + value[31:61] + foreign


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One 40-digit record of a magstripe batch upload (0320, 60.3 ``201``)."""

    card_org: str  # "00" CUP, "01" foreign
    trace: str  # n6
    pan: str  # up to 20 digits (right-aligned, zero-filled on the wire)
    amount: int  # fen


def parse_batch_upload(value: str) -> list[BatchRecord]:
    """Field 48 of a magstripe 0320: count n2 (<= 8) + count x 40 digits."""
    _digits("48", value)
    if len(value) < 2:
        raise FieldFormatError("48", "missing record count", 0)
    count = int(value[:2])
    if count > 8:
        raise FieldFormatError("48", f"record count {count} > 8", 0)
    if len(value) != 2 + 40 * count:
        raise FieldFormatError("48", f"{count} records need {2 + 40 * count} digits, got {len(value)}",
                               min(len(value), 2 + 40 * count))
    out = []
    for i in range(count):
        r = value[2 + 40 * i : 42 + 40 * i]
        out.append(BatchRecord(r[0:2], r[2:8], r[8:28].lstrip("0") or "0", int(r[28:40])))
    return out


def build_batch_upload(records: list[BatchRecord]) -> str:
    if len(records) > 8:
        raise FieldFormatError("48", f"at most 8 records per 0320, got {len(records)}")
    out = [f"{len(records):02d}"]
    for r in records:
        if len(r.pan) > 20 or not r.pan.isdigit():
            raise FieldFormatError("48", f"PAN must be 1..20 digits (length {len(r.pan)})")
        out.append(_num("48", r.card_org, 2, "card_org") + _num("48", r.trace, 6, "trace")
                   + r.pan.rjust(20, "0") + _num("48", r.amount, 12, "amount"))
    return "".join(out)


# ----------------------------------------------------------------------------------- field 62

#: 60.3 sign-on mode -> field 62 length in the 0810.
KEY_LAYOUT_LENGTHS: dict[str, int] = {"001": 24, "003": 40, "004": 60}
_MODE_BY_LENGTH = {v: k for k, v in KEY_LAYOUT_LENGTHS.items()}


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """Working keys of an 0810 field 62, as ciphertexts under the TMK with 4-byte check values.

    ``repr`` shows only check values (ciphertexts are harmless but bulky in logs).
    """

    pik: bytes
    pik_cv: bytes
    mak: bytes  # always 8 bytes (single length, loaded as K||K in double-length mode)
    mak_cv: bytes
    tdk: bytes | None = None
    tdk_cv: bytes | None = None

    def __repr__(self) -> str:
        tdk = f", tdk_cv={self.tdk_cv.hex().upper()}" if self.tdk_cv is not None else ""
        return (f"WorkingKeys(pik_len={len(self.pik)}, pik_cv={self.pik_cv.hex().upper()}, "
                f"mak_cv={self.mak_cv.hex().upper()}{tdk})")

    @property
    def mode(self) -> str:
        if len(self.pik) == 8:
            return "001"
        return "004" if self.tdk is not None else "003"


def _as_bytes(field: str, value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise FieldFormatError(field, "not a hex string") from None
    return bytes(value)


def parse_working_keys(value: bytes | str, mode: str | None = None) -> WorkingKeys:
    """Field 62 of an 0810 (bytes or the codec's hex string) -> :class:`WorkingKeys`.

    ``mode`` is the 60.3 of the sign-on (``001``/``003``/``004``); by default it follows from the length.
    """
    data = _as_bytes("62", value)
    if mode is None:
        mode = _MODE_BY_LENGTH.get(len(data))
        if mode is None:
            raise FieldFormatError("62", f"key block of {len(data)} bytes matches no layout (24/40/60)", 0)
    if mode not in KEY_LAYOUT_LENGTHS:
        raise FieldFormatError("62", f"unknown sign-on mode {mode!r}")
    want = KEY_LAYOUT_LENGTHS[mode]
    if len(data) != want:
        raise FieldFormatError("62", f"mode {mode} needs {want} bytes, got {len(data)}", min(len(data), want))
    if mode == "001":
        return WorkingKeys(data[0:8], data[8:12], data[12:20], data[20:24])
    if data[28:36] != bytes(8):
        raise FieldFormatError("62", "MAK filler is not 8 zero bytes", 28)
    keys = WorkingKeys(data[0:16], data[16:20], data[20:28], data[36:40])
    if mode == "004":
        keys = WorkingKeys(keys.pik, keys.pik_cv, keys.mak, keys.mak_cv, data[40:56], data[56:60])
    return keys


def build_working_keys(keys: WorkingKeys) -> bytes:
    """:class:`WorkingKeys` -> field 62 bytes (put ``.hex().upper()`` in the document)."""
    cvs = [keys.pik_cv, keys.mak_cv] + ([keys.tdk_cv] if keys.tdk is not None else [])
    if any(cv is None or len(cv) != 4 for cv in cvs):
        raise FieldFormatError("62", "check values must be 4 bytes")
    if len(keys.mak) != 8:
        raise FieldFormatError("62", f"MAK ciphertext must be 8 bytes, got {len(keys.mak)}")
    if len(keys.pik) == 8:
        if keys.tdk is not None:
            raise FieldFormatError("62", "single-length layout 001 carries no TDK")
        return keys.pik + keys.pik_cv + keys.mak + keys.mak_cv
    if len(keys.pik) != 16:
        raise FieldFormatError("62", f"PIK ciphertext must be 8 or 16 bytes, got {len(keys.pik)}")
    out = keys.pik + keys.pik_cv + keys.mak + bytes(8) + keys.mak_cv
    if keys.tdk is not None:
        if len(keys.tdk) != 16:
            raise FieldFormatError("62", f"TDK ciphertext must be 16 bytes, got {len(keys.tdk)}")
        out += keys.tdk + keys.tdk_cv  # type: ignore[operator]
    return out


# ----------------------------------------------------------------------------------- field 54


@dataclass(frozen=True, slots=True)
class Balance:
    """Field 54 balance block (an20): account type n2, amount type n2, currency n3, sign C/D, amount n12."""

    amount: int  # fen, negative for a debit (D) balance
    currency: str = "156"
    account_type: str = "00"
    amount_type: str = "02"  # 01 ledger, 02 available


def parse_balance(value: str) -> Balance:
    if len(value) != 20:
        raise FieldFormatError("54", f"balance block must be 20 characters, got {len(value)}", min(len(value), 20))
    _digits("54", value[:7])
    sign = value[7]
    if sign not in "CD":
        raise FieldFormatError("54", f"sign must be C or D, got {sign!r}", 7)
    _digits("54", value[8:], 8)
    amount = int(value[8:])
    return Balance(-amount if sign == "D" else amount, value[4:7], value[0:2], value[2:4])


def build_balance(amount: int, currency: str = "156", account_type: str = "00", amount_type: str = "02") -> str:
    sign = "D" if amount < 0 else "C"
    return (_num("54", account_type, 2, "account_type") + _num("54", amount_type, 2, "amount_type")
            + _num("54", currency, 3, "currency") + sign + _num("54", abs(amount), 12, "amount"))


# ----------------------------------------------------------------------------------- field 63


@dataclass(frozen=True, slots=True)
class Field63:
    """Field 63: 63.1 card organisation an3 (``CUP``, ``VIS``, ...) + reply texts of 20 GBK bytes each.

    In requests it carries the operator number (``"01 "``) or, in a refund, the original card org:
    both parse as ``card_org`` with empty texts.
    """

    card_org: str
    issuer_text: str = ""
    cups_text: str = ""
    acquirer_text: str = ""

    @property
    def domestic(self) -> bool:
        """Settlement side: ``CUP`` counts as domestic (内卡), everything else as foreign."""
        return self.card_org == "CUP"


def parse_field63(value: str) -> Field63:
    raw = value.encode("gbk")
    if len(raw) < 3:
        raise FieldFormatError("63", f"needs at least 3 bytes (63.1), got {len(raw)}", len(raw))
    texts = []
    for i in range(3):
        chunk = raw[3 + 20 * i : 23 + 20 * i]
        texts.append(chunk.decode("gbk", errors="replace").rstrip(" "))
    return Field63(raw[:3].decode("gbk", errors="replace"), *texts)


def _fit_gbk(text: str, width: int) -> bytes:
    out = b""
    for ch in text:
        b = ch.encode("gbk")
        if len(out) + len(b) > width:
            break
        out += b
    return out.ljust(width, b" ")


def build_field63(card_org: str, issuer_text: str = "", cups_text: str = "", acquirer_text: str = "") -> str:
    """63.1 (3 chars) + texts cut at a character boundary and space-padded to 20 GBK bytes.

    Trailing empty texts are omitted; the result is the ``str`` the codec encodes as GBK.
    """
    if len(card_org.encode("gbk")) != 3:
        raise FieldFormatError("63", f"63.1 card org must be 3 bytes, got {card_org!r}")
    texts = [issuer_text, cups_text, acquirer_text]
    while texts and not texts[-1]:
        texts.pop()
    raw = card_org.encode("gbk") + b"".join(_fit_gbk(t, 20) for t in texts)
    return raw.decode("gbk")


# ----------------------------------------------------------------------------------- 53, 22, tracks


def build_field53(pin_with_pan: bool = True, double_length: bool = True, tracks_encrypted: bool = False) -> str:
    """Field 53 (n16): 53.1 ``2``/``1`` PIN with/without PAN, 53.2 ``6`` TDES / ``0`` DES, 53.3 ``1`` tracks encrypted."""
    return ("2" if pin_with_pan else "1") + ("6" if double_length else "0") + ("1" if tracks_encrypted else "0") + "0" * 13


def parse_entry_mode(value: str) -> tuple[str, str]:
    """Field 22 (3 digits) -> ``(pan_entry, pin_capability)``: ``"051"`` -> ``("05", "1")``."""
    if len(value) != 3:
        raise FieldFormatError("22", f"must be 3 digits, got {value!r}")
    _digits("22", value)
    return value[:2], value[2]


def track_to_wire(track: str) -> str:
    """Track 2/3 text (``=`` separator) -> the codec value for fields 35/36 (``D`` separator)."""
    wire = track.replace("=", "D").upper()
    for i, ch in enumerate(wire):
        if ch not in "0123456789D":
            raise FieldFormatError("35", f"track data may hold digits and '=' only, got {ch!r}", i)
    return wire


def track_from_wire(value: str) -> str:
    """Codec value of field 35/36 -> track text with ``=`` (only for clear, not TDK-encrypted, tracks)."""
    return value.upper().replace("D", "=")


def tdk_block(track: str) -> tuple[str, int, bytes]:
    """The 8-byte block of a track that the TDK encrypts (60.3 ``004``, 53.3 ``1``; reference §9.3).

    ``track`` is the codec value of field 35/36 (``D`` separator).  It is left-padded with ``F`` to
    at least 17 characters; the block is the 16 digits at positions ``len-17 .. len-2`` (odd
    length) or ``len-18 .. len-3`` (even length).  Returns ``(padded_track, start, block)``: run the
    block through the HSM (encrypt on the terminal side, decrypt on the host) and put the result
    back with :func:`tdk_replace`.  The same positions apply to the encrypted value, whose length
    is unchanged, so the host calls this on the received field too.
    """
    value = track.upper()
    for i, ch in enumerate(value):
        if ch not in "0123456789ABCDEF":
            raise FieldFormatError("35", f"track value may hold hex digits only, got {ch!r}", i)
    padded = value.rjust(17, "F")
    n = len(padded)
    start = n - 17 if n % 2 else n - 18
    return padded, start, bytes.fromhex(padded[start : start + 16])


def tdk_replace(padded: str, start: int, block: bytes) -> str:
    """Write an 8-byte block back as 16 hex digits at ``start`` (see :func:`tdk_block`).

    After decryption strip the ``F`` padding with ``value.lstrip("F")``.
    """
    if len(block) != 8 or not 0 <= start <= len(padded) - 16:
        raise FieldFormatError("35", f"block of {len(block)} bytes does not fit at {start}")
    return padded[:start] + block.hex().upper() + padded[start + 16 :]


_TRACK_FIELDS = frozenset({"35", "36"})
#: keys never checked as fields (MTI is checked on its own; bitmaps and header are not digits)
_NOT_FIELDS = frozenset({"t", "p", "1", "h"})
_TRACK_CHARS = "0123456789Dd"
_ENC_TRACK_CHARS = "0123456789ABCDEFabcdef"
#: (POS_SPEC, its BCD (nibble) fields), computed on first use
_pos_nibbles: tuple[Any, frozenset[str]] | None = None


def _nibble_fields(spec: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """Keys of ``spec`` whose length counts nibbles (BCD), without the MTI/bitmap/header keys."""
    return frozenset(k for k, f in spec.items() if k not in _NOT_FIELDS and f.get("len_count") == "nibbles")


def check_numeric_fields(doc: Mapping[str, str], spec: Mapping[str, Mapping[str, Any]] | None = None,
                         *, encrypted_tracks: bool = False) -> None:
    """Reject BCD fields holding non-decimal nibbles (the codec, like pyiso8583, accepts any hex).

    Run it on every decoded request before using its values: a terminal sending amount nibbles
    ``A``-``F`` gets ``FieldFormatError`` naming the field and the digit offset.  Track fields 35/36
    may hold ``D`` (separator), or any hex digit when ``encrypted_tracks`` (53.3 = ``1``: the
    TDK block is hex).  ``MTI`` (``t``) must be 4 digits.  ``spec`` defaults to ``POS_SPEC``, whose
    nibble fields are looked up once (``POS_SPEC`` is not edited at run time).

    A valid document is accepted by one scan (``_fields.numeric_ok``, compiled); the characters
    are walked here only to name the field and offset of a bad one.
    """
    global _pos_nibbles
    if spec is None:
        cached = _pos_nibbles
        if cached is None:
            from .spec import POS_SPEC

            cached = _pos_nibbles = (POS_SPEC, _nibble_fields(POS_SPEC))
        nibbles = cached[1]
    else:
        nibbles = _nibble_fields(spec)
    if _numeric_ok(doc, nibbles, _TRACK_FIELDS, encrypted_tracks):
        return
    # something is wrong: walk the fields in order to name the field and the offset
    mti = doc.get("t")
    tracks = _ENC_TRACK_CHARS if encrypted_tracks else _TRACK_CHARS
    if mti is not None:
        if len(mti) != 4:
            raise FieldFormatError("t", f"MTI must be 4 digits, got {mti!r}")
        _digits("t", mti)
    for field, value in doc.items():
        if field not in nibbles:
            continue
        if field in _TRACK_FIELDS:
            for i, ch in enumerate(value):
                if ch not in tracks:
                    raise FieldFormatError(field, f"invalid track character {ch!r}", i)
        else:
            _digits(field, value)
