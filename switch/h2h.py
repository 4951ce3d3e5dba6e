"""Host-to-host (H2H) ISO 8583 dialect between the switch and card issuers / QR wallets.

Wire format: a 2-byte big-endian length (counting the bytes after itself), then an ISO 8583:1987
message encoded with pyiso8583's ``default_ascii`` spec (ASCII MTI, hex bitmaps, ASCII fields).
Binary data travels as uppercase hex text: field 52 (PIN block under the issuer's ZPK, 16 hex)
and field 55 (ICC data, BER-TLV as hex, LLLVAR).

Messages are plain ``dict[str, str]`` keyed like pyiso8583 (``"t"`` = MTI, ``"2"`` .. ``"128"``),
encoded by ``_fastcore.iso8583``, the compiled drop-in for pyiso8583 (its pure twin when not built);
``tests/test_issuer_h2h.py`` decodes our frames with pyiso8583 itself.

This module only builds, checks and (de)frames messages: no I/O. See ``docs/issuer.md``.
"""

from __future__ import annotations

import datetime as _dt
import time as _time
from collections.abc import Iterable, Mapping
from enum import StrEnum

from iso8583.specs import default_ascii

from _fastcore import iso8583  # compiled drop-in for pyiso8583 (pure twin when not built)
from _fastcore import tlv as _tlv

__all__ = [
    "SPEC", "MAX_FRAME", "H2HError", "FrameReader", "TxnKind",
    "encode", "decode", "frame", "classify", "response_mti", "is_response", "match_key",
    "financial_request", "reversal_for", "echo_request", "response_to", "is_reversible",
    "transmission_time", "field90", "parse_field90", "field54_balance", "parse_field54",
    "tlv_decode", "tlv_encode", "field55_tags", "tags_to_field55", "APPROVED", "REVERSAL_DONE",
    "SENSITIVE_FIELDS", "qr_pay_request", "qr_query_request", "KIND_CODES", "is_advice",
]

SPEC = default_ascii
#: Largest body accepted on the wire (bytes after the length prefix).
MAX_FRAME = 8192

APPROVED = frozenset({"00", "10", "11"})
#: 0430 response codes that mean "the reversal is done" (§7: unknown originals are answered 25).
REVERSAL_DONE = frozenset({"00", "12", "25"})

#: Fields forwarded for authorisation that must never be kept (journal, ledger, reversal queue, logs).
SENSITIVE_FIELDS = ("35", "36", "45", "52")

#: Fields an issuer response echoes from the request.
_ECHO = ("2", "3", "4", "7", "11", "12", "13", "22", "23", "25", "32", "37", "41", "42", "49", "90")


class H2HError(ValueError):
    """A message that cannot be framed, encoded or decoded; names the field and offset when known."""

    def __init__(self, msg: str, field: str | None = None, offset: int | None = None) -> None:
        where = "".join(
            [f" (field {field}" if field else "", f" offset {offset}" if offset is not None else "",
             ")" if field else ""])
        super().__init__(msg + where)
        self.field = field
        self.offset = offset


class TxnKind(StrEnum):
    """What an H2H request asks for; see the table in ``docs/issuer.md``."""

    SALE = "sale"
    BALANCE = "balance"
    PREAUTH = "preauth"
    PREAUTH_VOID = "preauth_void"
    COMPLETION = "completion"          # 0200/000000 with 25 = 06 (online completion)
    COMPLETION_ADVICE = "completion_advice"  # 0220/000000 with 25 = 06
    VOID = "void"                      # 0200/200000
    REFUND = "refund"                  # 0220/200000
    REVERSAL = "reversal"              # 0400/0420
    ECHO = "echo"                      # 0800/301
    QUERY = "query"                    # 0200/531000: QR order status
    UNKNOWN = "unknown"


# ---------------------------------------------------------------- encode / decode / framing

#: The codec bound to ``SPEC``: encodes without copying or touching the message (bitmap keys
#: ``p``/``1`` are ignored) and decodes without building ``doc_enc``; same bytes and errors as
#: ``iso8583.encode``/``decode`` except a key beyond the spec (see :func:`encode`).
_CODEC = iso8583.Codec(SPEC)


def encode(msg: Mapping[str, str]) -> bytes:
    """Encode one message body (no length prefix)."""
    try:
        return _CODEC.encode(msg)
    except iso8583.FieldNotInSpecEncodeError as exc:
        raise KeyError(exc.field) from None  # what pyiso8583 raises for a key beyond the spec
    except iso8583.EncodeError as exc:
        raise H2HError(f"cannot encode {msg.get('t', '????')}: {exc.msg}", field=exc.field) from None


def frame(msg: Mapping[str, str]) -> bytes:
    """Encode with the 2-byte big-endian length prefix, ready for ``transport.write``."""
    body = encode(msg)
    if len(body) > MAX_FRAME:
        raise H2HError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return len(body).to_bytes(2, "big") + body


def decode(body: bytes | bytearray) -> dict[str, str]:
    """Decode one body; bitmap keys ``p``/``1`` are dropped."""
    try:
        doc = _CODEC.decode(body if type(body) is bytes else bytes(body))
    except iso8583.DecodeError as exc:
        raise H2HError(f"cannot decode message: {exc.msg}", field=exc.field, offset=exc.pos) from None
    doc.pop("p", None)
    doc.pop("1", None)
    return doc


class FrameReader:
    """Accumulates TCP bytes and yields complete bodies (length prefix removed).

    A zero length or one above ``max_frame`` raises :class:`H2HError`: the stream cannot be
    resynchronised, so the caller closes the connection.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if size == 0 or size > self.max_frame:
                raise H2HError(f"bad frame length {size}", field="length", offset=pos)
            if n - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------- classification

def classify(msg: Mapping[str, str]) -> TxnKind:
    """The transaction kind of a request (or of the request a response answers)."""
    mti = msg.get("t", "")
    # request class of a response (x1x -> x0x) or a repeat (0221 -> 0220, 0421 -> 0420)
    req = mti[:2] + str(int(mti[2]) & ~1) + "0" if len(mti) == 4 and mti.isdigit() else mti
    proc = msg.get("3", "")[:2]
    cond = msg.get("25", "00")
    if req in ("0400", "0420"):
        return TxnKind.REVERSAL
    if req == "0800":
        return TxnKind.ECHO
    if req == "0100":
        return {"03": TxnKind.PREAUTH, "20": TxnKind.PREAUTH_VOID}.get(proc, TxnKind.UNKNOWN)
    if req == "0200":
        if proc == "31":
            return TxnKind.BALANCE
        if proc == "53":
            return TxnKind.QUERY
        if proc == "00":
            return TxnKind.COMPLETION if cond == "06" else TxnKind.SALE
        if proc == "20":
            return TxnKind.VOID
    if req == "0220":
        if proc == "20":
            return TxnKind.REFUND
        if proc == "00" and cond == "06":
            return TxnKind.COMPLETION_ADVICE
    return TxnKind.UNKNOWN


def is_response(msg: Mapping[str, str]) -> bool:
    mti = msg.get("t", "")
    return len(mti) == 4 and mti[2] in "13579"


def response_mti(mti: str) -> str:
    """Request MTI -> response MTI (0200 -> 0210; a repeat 0221 / 0421 is answered 0230 / 0430)."""
    if len(mti) != 4 or not mti.isdigit() or int(mti[2]) % 2:
        raise H2HError(f"not a request MTI: {mti!r}", field="t")
    return mti[:2] + str(int(mti[2]) + 1) + "0"


def is_advice(msg: Mapping[str, str]) -> bool:
    """0220/0221 advices (refund, completion advice): never reversed, store-and-forwarded instead."""
    return msg.get("t", "")[:3] == "022"


def match_key(msg: Mapping[str, str]) -> tuple[str, str, str]:
    """Request/response matching key: (STAN 11, terminal 41, RRN 37)."""
    return (msg.get("11", ""), msg.get("41", ""), msg.get("37", ""))


def is_reversible(msg: Mapping[str, str]) -> bool:
    """True when an unanswered request must be reversed upstream (§4 "reverse on no answer")."""
    return classify(msg) in (TxnKind.SALE, TxnKind.PREAUTH, TxnKind.PREAUTH_VOID,
                             TxnKind.COMPLETION, TxnKind.VOID)


# ---------------------------------------------------------------- field helpers

#: [whole second, field 7 (UTC MMDDhhmmss), field 12 (local hhmmss), field 13 (local MMDD)]
_clock: list = [-1, "", "", ""]


def _now_fields() -> list:
    """The ``_clock`` entry of the current second (formatted once per second)."""
    now = int(_time.time())
    clock = _clock
    if now != clock[0]:
        loc = _time.localtime(now)
        clock[1:] = (_time.strftime("%m%d%H%M%S", _time.gmtime(now)), _time.strftime("%H%M%S", loc),
                     _time.strftime("%m%d", loc))
        clock[0] = now
    return clock


def transmission_time(now: _dt.datetime | None = None) -> str:
    """Field 7, MMDDhhmmss in UTC (of ``now``, or of the current second: formatted once per second)."""
    if now:
        return now.strftime("%m%d%H%M%S")
    return _now_fields()[1]  # type: ignore[no-any-return]


def field90(orig: Mapping[str, str], forwarding: str = "") -> str:
    """Field 90 (n42): original MTI 4, STAN 6, transmission time 10, acquirer ID 11, forwarding ID 11."""
    mti, stan, f7 = orig.get("t", ""), orig.get("11", ""), orig.get("7", "")
    if len(mti) != 4 or len(stan) != 6 or len(f7) != 10:
        raise H2HError("original message lacks MTI, 11 or 7 for field 90", field="90")
    acq = orig.get("32", "").rjust(11, "0")
    return f"{mti}{stan}{f7}{acq}{forwarding.rjust(11, '0')}"


def parse_field90(value: str) -> dict[str, str]:
    if len(value) != 42 or not value.isdigit():
        raise H2HError(f"field 90 must be 42 digits, got {len(value)}", field="90")
    return {"mti": value[0:4], "stan": value[4:10], "transmission": value[10:20],
            "acquirer": value[20:31], "forwarding": value[31:42]}


def field54_balance(balance: int, currency: str = "156", account_type: str = "00",
                    amount_type: str = "02") -> str:
    """Field 54 additional amount: account type 2, amount type 2 (02 available), currency 3,
    sign C/D, amount n12 (fen). The sign sits at offset 7 and the amount at 8-19, as in the POS dialect."""
    sign = "C" if balance >= 0 else "D"
    return f"{account_type}{amount_type}{currency}{sign}{abs(balance):012d}"


def parse_field54(value: str) -> int:
    if len(value) < 20 or value[7] not in "CD" or not value[8:20].isdigit():
        raise H2HError("field 54 is not account/amount type, currency, sign, n12", field="54")
    amount = int(value[8:20])
    return amount if value[7] == "C" else -amount


# ---------------------------------------------------------------- BER-TLV for field 55

#: tag bytes <-> tag hex of the tags seen so far (bounded: unknown tags are converted every time)
_TAG_HEX: dict[bytes, str] = {}
_TAG_BYTES: dict[str, bytes] = {}
_TAG_CACHE_MAX = 1024


#: compiled BER-TLV decoder (stricter than this dialect's: see :func:`tlv_decode`), None when not built
_FAST_TLV = _tlv.decode_dict if _tlv.IMPLEMENTATION == "c" else None


def tlv_decode(data: bytes) -> dict[str, bytes]:
    """Decode a flat BER-TLV list into ``{TAG_HEX: value}``; constructed tags (71/72) keep raw values.

    The compiled decoder answers when its result is surely ours: it raised nothing (no 00 padding,
    duplicate, tag over 4 bytes or bad length), no tag starts with FF (padding here) and every
    length was one byte (the sizes add up). Anything else takes the loop below.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if _FAST_TLV is not None:
        try:
            fast = _FAST_TLV(data)
        except Exception:  # noqa: BLE001 - the loop below raises ours (or accepts it)
            fast = None
        if fast is not None:
            tags = "".join(fast)
            if "FF" not in tags and len(tags) // 2 + len(fast) + sum(map(len, fast.values())) == len(data):
                return fast
    out: dict[str, bytes] = {}
    names = _TAG_HEX
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x00 or b == 0xFF:  # padding between objects
            i += 1
            continue
        start = i
        i += 1
        if b & 0x1F == 0x1F:
            while i < n and data[i] & 0x80:
                i += 1
            i += 1
        if i >= n:
            raise H2HError("truncated TLV tag", field="55", offset=start)
        raw = data[start:i]
        tag = names.get(raw)
        if tag is None:
            tag = raw.hex().upper()
            if len(names) < _TAG_CACHE_MAX:
                names[raw] = tag
        length = data[i]
        i += 1
        if length & 0x80:
            nb = length & 0x7F
            if nb == 0 or nb > 3 or i + nb > n:
                raise H2HError(f"bad TLV length for tag {tag}", field="55", offset=i - 1)
            length = int.from_bytes(data[i:i + nb], "big")
            i += nb
        end = i + length
        if end > n:
            raise H2HError(f"TLV value of tag {tag} overruns the data", field="55", offset=i)
        out[tag] = data[i:end]
        i = end
    return out


def tlv_encode(tags: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> bytes:
    items = tags.items() if type(tags) is dict or isinstance(tags, Mapping) else tags
    parts: list[bytes] = []
    add = parts.append
    tag_bytes = _TAG_BYTES
    for tag, value in items:
        tb = tag_bytes.get(tag)
        if tb is None:
            tb = bytes.fromhex(tag)
            if type(tag) is str and len(tag_bytes) < _TAG_CACHE_MAX:
                tag_bytes[tag] = tb
        add(tb)
        ln = len(value)
        if ln < 0x80:
            add(_LEN1[ln])
        elif ln < 0x100:
            add(bytes((0x81, ln)))
        else:
            add(bytes((0x82, ln >> 8, ln & 0xFF)))
        add(value)
    return b"".join(parts)


_LEN1 = [bytes((n,)) for n in range(0x80)]


def field55_tags(value: str) -> dict[str, bytes]:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise H2HError("field 55 is not hex", field="55") from None
    return tlv_decode(raw)


def tags_to_field55(tags: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> str:
    return tlv_encode(tags).hex().upper()


# ---------------------------------------------------------------- builders

_KIND_CODES: dict[TxnKind, tuple[str, str, str]] = {
    # kind: (MTI, processing code, 25)
    TxnKind.SALE: ("0200", "000000", "00"),
    TxnKind.BALANCE: ("0200", "310000", "00"),
    TxnKind.PREAUTH: ("0100", "030000", "06"),
    TxnKind.PREAUTH_VOID: ("0100", "200000", "06"),
    TxnKind.COMPLETION: ("0200", "000000", "06"),
    TxnKind.COMPLETION_ADVICE: ("0220", "000000", "06"),
    TxnKind.VOID: ("0200", "200000", "00"),
    TxnKind.REFUND: ("0220", "200000", "00"),
}


def financial_request(
    kind: TxnKind | str,
    *,
    terminal_id: str,
    merchant_id: str,
    rrn: str,
    amount: int | None = None,
    pan: str | None = None,
    track2: str | None = None,
    expiry: str | None = None,
    entry_mode: str = "021",
    psn: str | None = None,
    pin_block: str | None = None,
    icc: Mapping[str, bytes] | None = None,
    auth_code: str | None = None,
    original: Mapping[str, str] | None = None,
    acquirer_id: str = "00000000001",
    currency: str = "156",
    stan: str = "000000",
    local: _dt.datetime | None = None,
) -> dict[str, str]:
    """Build a 0100/0200/0220 request. ``stan`` and field 7 are normally (re)set by ``IssuerLink``.

    ``original`` (for void, refund, completion) is the original H2H request and fills field 90.
    """
    try:
        codes = _KIND_ROWS.get(kind)
    except TypeError:  # unhashable: let TxnKind() reject it
        codes = None
    if codes is None:
        kind = TxnKind(kind)  # ValueError for a kind that does not exist
        raise H2HError(f"no request builder for {kind.value}")
    mti, proc, cond, balance = codes
    if local is None:
        clock = _now_fields()
        f7, f12, f13 = clock[1], clock[2], clock[3]
    else:
        f7 = transmission_time()
        f12, f13 = local.strftime("%H%M%S"), local.strftime("%m%d")
    msg: dict[str, str] = {"t": mti, "3": proc}
    if pan:
        msg["2"] = pan
    if not balance:
        if amount is None or amount < 0:
            raise H2HError("amount (fen, >= 0) is required", field="4")
        msg["4"] = f"{amount:012d}"
    msg["7"] = f7
    msg["11"] = stan
    msg["12"] = f12
    msg["13"] = f13
    if expiry:
        msg["14"] = expiry
    msg["22"] = entry_mode
    if psn is not None:
        msg["23"] = psn.rjust(3, "0")
    msg["25"] = cond
    msg["32"] = acquirer_id
    if track2:
        msg["35"] = track2
    msg["37"] = rrn
    if auth_code:
        msg["38"] = auth_code
    msg["41"] = terminal_id if len(terminal_id) == 8 else terminal_id.ljust(8)
    msg["42"] = merchant_id if len(merchant_id) == 15 else merchant_id.ljust(15)
    msg["49"] = currency
    if pin_block:
        msg["52"] = pin_block.upper()
    if icc:
        msg["55"] = tags_to_field55(icc)
    if original is not None:
        msg["90"] = field90(original)
    if not pan and not track2:
        raise H2HError("either PAN (2) or track 2 (35) is required", field="2")
    return msg


#: kind (member or its value: a StrEnum hashes as its value) -> (MTI, 3, 25, no field 4)
_KIND_ROWS: dict[str, tuple[str, str, str, bool]] = {
    k: (*row, k is TxnKind.BALANCE) for k, row in _KIND_CODES.items()}

#: public view of the request table: kind -> (MTI, processing code, condition code 25)
KIND_CODES: Mapping[TxnKind, tuple[str, str, str]] = _KIND_CODES

_REVERSAL_DROP = ("35", "36", "45", "52", "53", "55", "38", "39", "54")
_REVERSAL_ICC = ("95", "9F1E", "9F10", "9F36", "DF31")


def reversal_for(original: Mapping[str, str], reason: str = "98", *, advice: bool = True,
                 stan: str | None = None) -> dict[str, str]:
    """A 0420 (``advice``) or 0400 reversing ``original``.

    Keeps 2, 3, 4, 12, 13, 14, 22, 23, 25, 32, 37, 41, 42, 49; 39 = reason (98 timeout, A0 bad MAC,
    06 other); 90 = original data elements; drops track data, PIN block and 38; 55 is cut to the
    reversal tag set. Field 11 is ``stan`` (the link sets a fresh one per attempt) or the original's.
    """
    msg = {k: v for k, v in original.items() if k not in _REVERSAL_DROP and k not in ("p", "1", "90")}
    msg["t"] = "0420" if advice else "0400"
    msg["39"] = reason
    msg["90"] = field90(original)
    if stan is not None:
        msg["11"] = stan
    if "55" in original:
        tags = field55_tags(original["55"])
        kept = [(t, tags[t]) for t in _REVERSAL_ICC if t in tags]
        if kept:
            msg["55"] = tags_to_field55(kept)
    if "2" not in msg and "35" in original:
        pan = original["35"].replace("D", "=").split("=", 1)[0]
        msg["2"] = pan
    return msg


def qr_pay_request(*, payment_code: str, amount: int, terminal_id: str, merchant_id: str, rrn: str,
                   acquirer_id: str = "00000000001", currency: str = "156", stan: str = "000000",
                   local: _dt.datetime | None = None) -> dict[str, str]:
    """QR payment, merchant scans the customer's code: 0200/000000, 22 = 031, 48 = payment code,
    37 = our order number (see ``docs/issuer.md`` §5)."""
    if not payment_code.isdigit() or not 10 <= len(payment_code) <= 32:
        raise H2HError("payment code must be 10-32 digits", field="48")
    if amount <= 0:
        raise H2HError("amount (fen) must be > 0", field="4")
    if local is None:
        _, f7, f12, f13 = _now_fields()
    else:
        f7, f12, f13 = transmission_time(), local.strftime("%H%M%S"), local.strftime("%m%d")
    return {"t": "0200", "3": "000000", "4": f"{amount:012d}", "7": f7, "11": stan,
            "12": f12, "13": f13, "22": "031", "25": "00",
            "32": acquirer_id, "37": rrn, "41": terminal_id.ljust(8), "42": merchant_id.ljust(15),
            "48": payment_code, "49": currency}


def qr_query_request(original: Mapping[str, str], stan: str = "000000") -> dict[str, str]:
    """Order status query (0200/531000) for the QR payment ``original`` (matched on 41 + 37)."""
    msg = {k: original[k] for k in ("12", "13", "22", "25", "32", "37", "41", "42", "49") if k in original}
    msg.update({"t": "0200", "3": "531000", "7": transmission_time(), "11": stan})
    return msg


def echo_request(stan: str) -> dict[str, str]:
    """0800 echo test (field 70 = 301)."""
    return {"t": "0800", "7": transmission_time(), "11": stan, "70": "301"}


def response_to(request: Mapping[str, str], code: str, **fields: str) -> dict[str, str]:
    """The response skeleton for ``request``: MTI + 10, echoed keys, 39 = ``code``, plus ``fields``."""
    msg = {"t": response_mti(request.get("t", ""))}
    for k in _ECHO:
        if k in request:
            msg[k] = request[k]
    if "70" in request:
        msg["70"] = request["70"]
    msg["39"] = code
    msg.update(fields)
    return msg
