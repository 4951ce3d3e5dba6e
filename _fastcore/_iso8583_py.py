"""ISO 8583 codec, pure-Python twin: the readable reference of ``_fastcore.iso8583``.

``encode(doc, spec)`` and ``decode(data, spec)`` follow pyiso8583 4.0.1 to the
letter: the same spec format, the same ``doc_dec`` mutations (``"1"``/``"65"``
dropped, bitmaps written back), the same ``doc_enc`` contents, and the same
exceptions (``iso8583.EncodeError`` / ``iso8583.DecodeError`` with the same
message, field and position; ``TypeError`` / ``KeyError`` where pyiso8583
lets them escape).  The compiled twin ``_fastcore._iso8583`` runs a fast path
and falls back to this module whenever an input leaves the common case, so
this file is the single source of truth for every edge and error.

``Codec(spec)`` is the hot-loop API: ``decode(data)`` returns only the field
values (pyiso8583's ``doc_dec``), ``encode(fields)`` returns ``bytes`` and
leaves ``fields`` untouched.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, MutableMapping
from typing import Any

from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

__all__ = [
    "Codec",
    "DecodeError",
    "EncodeError",
    "FieldNotInSpecDecodeError",
    "FieldNotInSpecEncodeError",
    "decode",
    "encode",
    "invalidate",
]

DecodedDict = MutableMapping[str, str]
EncodedDict = dict[str, dict[str, bytes]]
SpecDict = Mapping[str, Mapping[str, Any]]
FieldSpec = Mapping[str, Any]

_NOT_IN_SPEC = "Field is not defined in the specification"


class FieldNotInSpecDecodeError(DecodeError, KeyError):
    """``Codec.decode``: the bitmap names a field the spec lacks (pyiso8583 raises a bare KeyError).

    A ``DecodeError`` naming the field and position, and still a ``KeyError`` for code written
    against pyiso8583.
    """

    __str__ = BaseException.__str__


class FieldNotInSpecEncodeError(EncodeError, KeyError):
    """``Codec.encode``: the document has a field the spec lacks (pyiso8583: a bare KeyError)."""

    __str__ = BaseException.__str__




# --------------------------------------------------------------------------- encode


def encode(doc_dec: DecodedDict, spec: SpecDict) -> tuple[bytearray, EncodedDict]:
    """Serialise ``doc_dec`` per ``spec``; returns ``(bytearray, doc_enc)`` like ``iso8583.encode``."""
    return _encode(doc_dec, spec, False)


def _encode(doc_dec: DecodedDict, spec: SpecDict, strict: bool) -> tuple[bytearray, EncodedDict]:
    if not isinstance(doc_dec, dict):
        raise TypeError(f"Decoded ISO8583 data must be dict, not {doc_dec.__class__.__name__}")

    out = bytearray()
    doc_enc: EncodedDict = {}
    # Bitmaps are computed from the fields present; never taken from the caller.
    doc_dec.pop("1", None)
    doc_dec.pop("65", None)

    if spec["h"]["max_len"] > 0:
        if "h" not in doc_dec:
            raise EncodeError("Field data is required according to specifications", doc_dec, doc_enc, "h")
        out += _encode_field(doc_dec, doc_enc, "h", spec["h"])
    out += _encode_type(doc_dec, doc_enc, spec)

    try:
        fields = {int(k) for k in doc_dec.keys() if k.isnumeric()}
    except AttributeError:
        bad = [k for k in doc_dec.keys() if not isinstance(k, str)]
        raise EncodeError(f"Dictionary contains invalid fields {bad}", doc_dec, doc_enc, "p") from None
    if not fields.issubset(range(1, 193)):
        outside = sorted(fields.difference(range(1, 193)))
        raise EncodeError(
            f"Dictionary contains fields outside of 1-192 range {outside}", doc_dec, doc_enc, "p"
        )

    tertiary = fields.intersection(range(129, 193))
    if tertiary:
        fields.add(65)
    secondary = fields.intersection(range(65, 129))
    if secondary:
        fields.add(1)

    out += _encode_bitmap(doc_dec, doc_enc, "p", spec["p"], 0, False, fields.intersection(range(1, 65)))
    if 1 in fields:
        out += _encode_bitmap(doc_dec, doc_enc, "1", spec["1"], 64, False, secondary)
        fields.remove(1)
    if 65 in fields:
        out += _encode_bitmap(doc_dec, doc_enc, "1", spec["1"], 128, True, tertiary)
        fields.remove(65)

    for key in [str(i) for i in sorted(fields)]:
        try:
            fspec = spec[key]
        except KeyError:
            if strict:  # Codec: a clean EncodeError (still a KeyError) instead of a bare KeyError
                raise FieldNotInSpecEncodeError(_NOT_IN_SPEC, doc_dec, doc_enc, key) from None
            raise
        out += _encode_field(doc_dec, doc_enc, key, fspec)
    return out, doc_enc


def _encode_type(doc_dec: DecodedDict, doc_enc: EncodedDict, spec: SpecDict) -> bytes:
    if "t" not in doc_dec:
        raise EncodeError("Field data is required", doc_dec, doc_enc, "t")
    fspec = spec["t"]
    binary = fspec["data_enc"] == "b"
    expected = 2 if binary else 4
    doc_enc["t"] = {"len": b"", "data": b""}
    if binary:
        data, n = _encode_binary(doc_dec, doc_enc, doc_dec["t"], "t", fspec, "bytes")
    else:
        data, n = _encode_text(doc_dec, doc_enc, doc_dec["t"], "t", fspec, "bytes")
    doc_enc["t"]["data"] = data
    if n != expected:
        raise EncodeError(f"Field data is {n} bytes, expecting {expected}", doc_dec, doc_enc, "t")
    return data


def _encode_bitmap(
    doc_dec: DecodedDict,
    doc_enc: EncodedDict,
    key: str,
    fspec: FieldSpec,
    offset: int,
    extended: bool,
    fields: set[int],
) -> bytes:
    bitmap = bytearray(8)
    for field in fields:
        bit = field - 1 - offset
        bitmap[bit >> 3] |= 0x80 >> (bit & 7)
    hex_bitmap = bitmap.hex().upper()

    if extended:
        doc_dec[key] = doc_dec[key] + hex_bitmap
    else:
        doc_dec[key] = hex_bitmap
        doc_enc[key] = {"len": b"", "data": b""}

    if fspec["data_enc"] == "b":
        data = bytes(bitmap)
    else:
        data, _ = _encode_text(doc_dec, doc_enc, hex_bitmap, key, fspec, "bytes")
    doc_enc[key]["data"] = doc_enc[key]["data"] + data if extended else data
    return data


def _encode_field(doc_dec: DecodedDict, doc_enc: EncodedDict, key: str, fspec: FieldSpec) -> bytes:
    doc_enc[key] = entry = {"len": b"", "data": b""}
    len_count = fspec.get("len_count", "bytes")
    if fspec["data_enc"] == "b":
        entry["data"], n = _encode_binary(doc_dec, doc_enc, doc_dec[key], key, fspec, len_count)
    else:
        entry["data"], n = _encode_text(doc_dec, doc_enc, doc_dec[key], key, fspec, len_count)

    len_type = fspec["len_type"]
    max_len = fspec["max_len"]
    if len_type == 0:
        if n != max_len:
            raise EncodeError(f"Field data is {n} {len_count}, expecting {max_len}", doc_dec, doc_enc, key)
        entry["len"] = b""
        return entry["data"]

    if n > max_len:
        raise EncodeError(
            f"Field data is {n} {len_count}, larger than maximum {max_len}", doc_dec, doc_enc, key
        )
    _encode_length(doc_dec, doc_enc, key, fspec, n, len_type)
    return entry["len"] + entry["data"]


_LEN_DOES_NOT_FIT = "Failed to encode field length, field length does not fit into configured field size"


def _encode_length(
    doc_dec: DecodedDict, doc_enc: EncodedDict, key: str, fspec: FieldSpec, n: int, len_type: int
) -> None:
    """Set ``doc_enc[key]["len"]``; like pyiso8583, a text prefix is stored before its width check."""
    entry = doc_enc[key]
    len_enc = fspec["len_enc"]
    if len_enc == "b":
        try:
            entry["len"] = n.to_bytes(len_type, "big", signed=False)
            return
        except OverflowError:
            raise EncodeError(_LEN_DOES_NOT_FIT, doc_dec, doc_enc, key) from None
    if len_enc == "bcd":
        digits = "{:0{w}d}".format(n, w=len_type * 2)
        if len(digits) > len_type * 2:
            raise EncodeError(_LEN_DOES_NOT_FIT, doc_dec, doc_enc, key)
        entry["len"] = binascii.a2b_hex(digits)
        return
    try:
        entry["len"] = bytes("{:0{w}d}".format(n, w=len_type), len_enc)
    except LookupError:
        raise EncodeError(
            "Failed to encode field length, unknown encoding specified", doc_dec, doc_enc, key
        ) from None
    except Exception as exc:  # pragma: no cover - digits always encode; kept for parity
        raise EncodeError(f"Failed to encode field length, {exc}", doc_dec, doc_enc, key) from None
    if len(entry["len"]) > len_type:
        raise EncodeError(_LEN_DOES_NOT_FIT, doc_dec, doc_enc, key)


def _encode_binary(
    doc_dec: DecodedDict,
    doc_enc: EncodedDict,
    value: Any,
    key: str,
    fspec: FieldSpec,
    len_count: Any,
) -> tuple[bytes, int]:
    """Hex/BCD text -> bytes; the length is in nibbles or bytes per ``len_count``."""
    try:
        if len_count == "nibbles" and len(value) & 1:
            data_to_encode = _add_pad(value, fspec)
        else:
            data_to_encode = value
        data = binascii.a2b_hex(data_to_encode)
    except Exception:
        # As in pyiso8583, ``data_to_encode`` may be unbound here (padding failed):
        # the resulting UnboundLocalError/TypeError escapes just like theirs.
        if len_count == "nibbles" and len(data_to_encode) % 2 == 1:
            raise EncodeError(
                "Failed to encode field, odd-length nibble data, specify pad", doc_dec, doc_enc, key
            ) from None
        if len(data_to_encode) % 2 == 1:
            raise EncodeError("Failed to encode field, odd-length hex data", doc_dec, doc_enc, key) from None
        raise EncodeError("Failed to encode field, non-hex data", doc_dec, doc_enc, key) from None
    return (data, len(value)) if len_count == "nibbles" else (data, len(data))


def _add_pad(value: str, fspec: FieldSpec) -> str:
    pad: str = fspec.get("left_pad", "")[:1]
    if len(pad) > 0:
        return pad + value
    pad = fspec.get("right_pad", "")[:1]
    if len(pad) > 0:
        return value + pad
    return value


def _encode_text(
    doc_dec: DecodedDict,
    doc_enc: EncodedDict,
    value: Any,
    key: str,
    fspec: FieldSpec,
    len_count: Any,
) -> tuple[bytes, int]:
    try:
        data = value.encode(fspec["data_enc"])
    except LookupError:
        raise EncodeError("Failed to encode field, unknown encoding specified", doc_dec, doc_enc, key) from None
    except Exception:
        raise EncodeError("Failed to encode field, invalid data", doc_dec, doc_enc, key) from None
    return (data, len(data) * 2) if len_count == "nibbles" else (data, len(data))


# --------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray, spec: SpecDict) -> tuple[dict[str, str], EncodedDict]:
    """Parse one message per ``spec``; returns ``(doc_dec, doc_enc)`` like ``iso8583.decode``."""
    return _decode(data, spec, False)


def _decode(data: bytes | bytearray, spec: SpecDict, strict: bool) -> tuple[dict[str, str], EncodedDict]:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"Encoded ISO8583 data must be bytes or bytearray, not {data.__class__.__name__}")

    doc_dec: dict[str, str] = {}
    doc_enc: EncodedDict = {}
    fields: set[int] = set()
    idx = 0
    if spec["h"]["max_len"] > 0:
        idx = _decode_field(data, doc_dec, doc_enc, idx, "h", spec["h"])
    idx = _decode_type(data, doc_dec, doc_enc, idx, spec)

    key = "p"
    idx = _decode_bitmap(data, doc_dec, doc_enc, idx, key, spec[key], 0, False, fields)
    if 1 in fields:
        key = "1"
        fspec = _decode_spec_of(data, doc_dec, doc_enc, idx, key, spec, strict)
        idx = _decode_bitmap(data, doc_dec, doc_enc, idx, key, fspec, 64, False, fields)
        fields.remove(1)
    if 65 in fields:  # the secondary bitmap is extended with the tertiary one
        idx = _decode_bitmap(data, doc_dec, doc_enc, idx, key, spec[key], 128, True, fields)
        fields.remove(65)

    for key in [str(i) for i in sorted(fields)]:
        fspec = _decode_spec_of(data, doc_dec, doc_enc, idx, key, spec, strict)
        idx = _decode_field(data, doc_dec, doc_enc, idx, key, fspec)

    if idx != len(data):
        raise DecodeError("Extra data after last field", data, doc_dec, doc_enc, idx, key)
    return doc_dec, doc_enc


def _decode_spec_of(
    s: bytes | bytearray,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    idx: int,
    key: str,
    spec: SpecDict,
    strict: bool,
) -> FieldSpec:
    """``spec[key]``; for ``Codec`` (``strict``) a missing field is a DecodeError naming it."""
    try:
        return spec[key]
    except KeyError:
        if strict:
            raise FieldNotInSpecDecodeError(_NOT_IN_SPEC, s, doc_dec, doc_enc, idx, key) from None
        raise


def _decode_type(
    s: bytes | bytearray, doc_dec: dict[str, str], doc_enc: EncodedDict, idx: int, spec: SpecDict
) -> int:
    fspec = spec["t"]
    binary = fspec["data_enc"] == "b"
    expected = 2 if binary else 4
    raw = s[idx : idx + expected]
    doc_dec["t"] = ""
    doc_enc["t"] = {"len": b"", "data": bytes(raw)}
    if len(raw) != expected:
        raise DecodeError(f"Field data is {len(raw)} bytes, expecting {expected}", s, doc_dec, doc_enc, idx, "t")
    doc_dec["t"] = raw.hex().upper() if binary else _decode_text(s, raw, idx, doc_dec, doc_enc, "t", fspec)
    return idx + expected


def _decode_bitmap(
    s: bytes | bytearray,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    idx: int,
    key: str,
    fspec: FieldSpec,
    offset: int,
    extended: bool,
    fields: set[int],
) -> int:
    binary = fspec["data_enc"] == "b"
    expected = 8 if binary else 16
    raw = s[idx : idx + expected]
    if extended:
        doc_enc[key]["data"] = doc_enc[key]["data"] + bytes(raw)
    else:
        doc_dec[key] = ""
        doc_enc[key] = {"len": b"", "data": bytes(raw)}

    if len(raw) != expected:
        have = len(doc_enc[key]["data"])
        want = expected * 2 if extended else expected
        raise DecodeError(f"Field data is {have} bytes, expecting {want}", s, doc_dec, doc_enc, idx, key)

    if binary:
        text = raw.hex().upper()
        doc_dec[key] = doc_dec[key] + text if extended else text
        bitmap = bytes(raw)
    else:
        text = _decode_text(s, raw, idx, doc_dec, doc_enc, key, fspec)
        doc_dec[key] = doc_dec[key] + text if extended else text
        try:
            bitmap = bytes.fromhex(text)
        except Exception:
            raise DecodeError("Failed to decode field, non-hex data", s, doc_dec, doc_enc, idx, key) from None

    for byte_idx, byte in enumerate(bitmap):
        for bit in range(8):
            if byte & (0x80 >> bit):
                fields.add(offset + byte_idx * 8 + bit + 1)
    return idx + expected


def _decode_field(
    s: bytes | bytearray,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    idx: int,
    key: str,
    fspec: FieldSpec,
) -> int:
    len_type = fspec["len_type"]
    len_count = fspec.get("len_count", "bytes")
    raw_len = s[idx : idx + len_type]
    doc_dec[key] = ""
    doc_enc[key] = entry = {"len": bytes(raw_len), "data": b""}
    if len(raw_len) != len_type:
        raise DecodeError(
            f"Field length is {len(raw_len)} bytes wide, expecting {len_type}", s, doc_dec, doc_enc, idx, key
        )

    if len_type == 0:
        n: int = fspec["max_len"]
    else:
        n = _decode_length(s, raw_len, doc_dec, doc_enc, idx, key, fspec)
        if n > fspec["max_len"]:
            raise DecodeError(
                f"Field data is {n} {len_count}, larger than maximum {fspec['max_len']}",
                s,
                doc_dec,
                doc_enc,
                idx,
                key,
            )
    idx += len_type
    if n == 0:
        return idx

    nbytes = (n + 1) // 2 if len_count == "nibbles" else n
    entry["data"] = bytes(s[idx : idx + nbytes])
    if len(entry["data"]) != nbytes:
        have = len(entry["data"]) * 2 if len_count == "nibbles" else len(entry["data"])
        raise DecodeError(f"Field data is {have} {len_count}, expecting {n}", s, doc_dec, doc_enc, idx, key)

    if fspec["data_enc"] == "b":
        doc_dec[key] = entry["data"].hex().upper()
        if len_count == "nibbles" and n & 1:
            doc_dec[key] = _remove_pad(s, idx, doc_dec, doc_enc, key, fspec, n)
    else:
        doc_dec[key] = _decode_text(s, entry["data"], idx, doc_dec, doc_enc, key, fspec)
    return idx + nbytes


def _decode_length(
    s: bytes | bytearray,
    raw_len: bytes | bytearray,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    idx: int,
    key: str,
    fspec: FieldSpec,
) -> int:
    len_enc = fspec["len_enc"]
    if len_enc == "b":
        return int.from_bytes(raw_len, "big", signed=False)
    if len_enc == "bcd":
        try:
            return int(raw_len.hex(), 10)
        except Exception:
            raise DecodeError(
                "Failed to decode field length, invalid BCD data", s, doc_dec, doc_enc, idx, key
            ) from None
    try:
        text = raw_len.decode(len_enc)
    except LookupError:
        raise DecodeError(
            "Failed to decode field length, unknown encoding specified", s, doc_dec, doc_enc, idx, key
        ) from None
    except Exception:
        raise DecodeError("Failed to decode field length, invalid data", s, doc_dec, doc_enc, idx, key) from None
    try:
        return int(text)
    except Exception:
        raise DecodeError(
            "Failed to decode field length, non-numeric data", s, doc_dec, doc_enc, idx, key
        ) from None


def _remove_pad(
    s: bytes | bytearray,
    idx: int,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    key: str,
    fspec: FieldSpec,
    n: int,
) -> str:
    value = doc_dec[key]
    pad: str = fspec.get("left_pad", "")[:1]
    if len(pad) > 0 and value[:1] == pad:
        return value[1:]
    pad = fspec.get("right_pad", "")[:1]
    if len(pad) > 0 and value[-1:] == pad:
        return value[:-1]
    raise DecodeError(f"Field data is {len(value)} nibbles, expecting {n}", s, doc_dec, doc_enc, idx, key)


def _decode_text(
    s: bytes | bytearray,
    raw: bytes | bytearray,
    idx: int,
    doc_dec: dict[str, str],
    doc_enc: EncodedDict,
    key: str,
    fspec: FieldSpec,
) -> str:
    try:
        return raw.decode(fspec["data_enc"])
    except LookupError:
        raise DecodeError("Failed to decode field, unknown encoding specified", s, doc_dec, doc_enc, idx, key) from None
    except Exception:
        raise DecodeError("Failed to decode field, invalid data", s, doc_dec, doc_enc, idx, key) from None


# --------------------------------------------------------------------------- hot-loop API


def invalidate(spec: SpecDict | None = None) -> None:
    """Forget compiled tables (all, or ``spec``'s).  The pure twin compiles nothing: a no-op."""


class Codec:
    """A codec bound to one spec: ``decode(data) -> fields``, ``encode(fields) -> bytes``.

    Same validation and exceptions as :func:`decode` / :func:`encode`, except that a
    field missing from the spec raises :class:`FieldNotInSpecDecodeError` /
    :class:`FieldNotInSpecEncodeError` (a ``DecodeError``/``EncodeError`` naming the field
    that is also a ``KeyError``) where pyiso8583 raises a bare ``KeyError``.  ``decode``
    skips building ``doc_enc`` (in the compiled twin); ``encode`` does not modify ``fields``.
    """

    __slots__ = ("spec",)

    def __init__(self, spec: SpecDict) -> None:
        self.spec = spec

    def decode(self, data: bytes | bytearray) -> dict[str, str]:
        return _decode(data, self.spec, True)[0]

    def encode(self, fields: Mapping[str, str]) -> bytes:
        if not isinstance(fields, dict):
            raise TypeError(f"Decoded ISO8583 data must be dict, not {fields.__class__.__name__}")
        return bytes(_encode(dict(fields), self.spec, True)[0])

    def __repr__(self) -> str:
        return f"<Codec spec={id(self.spec):#x} (pure)>"
