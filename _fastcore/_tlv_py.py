"""BER-TLV (EMV Book 3 Annex B) for field 55, pure-Python twin (compiled twin: ``_tlv.pyx``).

Representation: a tag is its upper-case hex string (``"9F26"``), a value is ``bytes``.

* :func:`decode` returns the top-level objects as ``[(tag, value), ...]`` in wire order,
  duplicates kept.  Constructed objects (bit 6 of the first tag byte set, e.g. ``71``/``72``
  issuer scripts) are *not* expanded: their value is the raw inner TLV bytes (decode it again,
  or use :func:`decode_nested`).  This keeps a decode/encode round trip byte-exact.
* :func:`decode_dict` is the same as a dict and rejects duplicate top-level tags.
* :func:`encode` takes pairs or a mapping; values are bytes or hex strings.  Lengths are
  written in minimal form (``< 0x80`` short, then ``81 xx``, ``82 xxxx``...).

Accepted on input: tags of 1-4 bytes, definite lengths in short form or long form with 1-4
length bytes (non-minimal long forms are accepted).  Everything else raises
:class:`~_fastcore.errors.TLVError` naming the tag (hex of the bytes read so far) and the
offset: truncated tag, tag longer than 4 bytes, tag ``00``, missing or truncated length,
indefinite length (``80``), length of more than 4 bytes, value running past the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import TLVError

__all__ = ["decode", "decode_dict", "decode_nested", "encode", "select", "is_constructed", "MAX_TAG_LEN"]

MAX_TAG_LEN = 4
TLVItems = list[tuple[str, bytes]]


def _read_one(data: bytes, pos: int, end: int) -> tuple[str, bool, int, int]:
    """Parse the tag and length at ``pos``: ``(tag, constructed, value_start, value_end)``."""
    start = pos
    first = data[pos]
    if first == 0x00:
        raise TLVError("invalid tag byte 00", "00", start)
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= end:
                raise TLVError("truncated tag", data[start:pos].hex().upper(), start)
            b = data[pos]
            pos += 1
            if pos - start > MAX_TAG_LEN:
                raise TLVError(f"tag longer than {MAX_TAG_LEN} bytes", data[start:pos].hex().upper(), start)
            if not b & 0x80:
                break
    tag = data[start:pos].hex().upper()
    if pos >= end:
        raise TLVError("missing length", tag, pos)
    n = data[pos]
    len_at = pos
    pos += 1
    if n & 0x80:
        k = n & 0x7F
        if k == 0:
            raise TLVError("indefinite length (80) not allowed", tag, len_at)
        if k > 4:
            raise TLVError(f"length field of {k} bytes not supported", tag, len_at)
        if pos + k > end:
            raise TLVError(f"truncated length ({end - pos} of {k} bytes)", tag, len_at)
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if n > end - pos:
        raise TLVError(f"value of {n} bytes runs past the data ({end - pos} bytes left)", tag, pos)
    return tag, bool(first & 0x20), pos, pos + n


def decode(data: bytes | bytearray | memoryview) -> TLVItems:
    """Top-level TLV objects in order, duplicates kept, constructed values raw."""
    data = bytes(data)
    end = len(data)
    out: TLVItems = []
    pos = 0
    while pos < end:
        tag, _, vs, ve = _read_one(data, pos, end)
        out.append((tag, data[vs:ve]))
        pos = ve
    return out


def decode_dict(data: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Top-level objects as ``{tag: value}``; a duplicate tag raises TLVError at its offset."""
    data = bytes(data)
    end = len(data)
    out: dict[str, bytes] = {}
    pos = 0
    while pos < end:
        tag, _, vs, ve = _read_one(data, pos, end)
        if tag in out:
            raise TLVError("duplicate tag", tag, pos)
        out[tag] = data[vs:ve]
        pos = ve
    return out


def decode_nested(data: bytes | bytearray | memoryview) -> list[tuple[str, bytes | list]]:
    """Like :func:`decode`, but constructed values are decoded recursively into lists.

    Offsets in errors are relative to the start of ``data``.
    """
    data = bytes(data)

    def walk(pos: int, end: int) -> list[tuple[str, bytes | list]]:
        items: list[tuple[str, bytes | list]] = []
        while pos < end:
            tag, constructed, vs, ve = _read_one(data, pos, end)
            items.append((tag, walk(vs, ve) if constructed else data[vs:ve]))
            pos = ve
        return items

    return walk(0, len(data))


def is_constructed(tag: str) -> bool:
    """True for a constructed tag (``70``, ``71``, ``72``, ``E0``...)."""
    return bool(int(tag[:2], 16) & 0x20)


def _tag_bytes(tag: str) -> bytes:
    try:
        raw = bytes.fromhex(tag)
    except (ValueError, TypeError):
        raise TLVError("tag is not a hex string", str(tag)) from None
    n = len(raw)
    if n == 0 or n > MAX_TAG_LEN or raw[0] == 0:
        raise TLVError("tag must be 1-4 bytes and not 00", tag)
    if raw[0] & 0x1F != 0x1F:
        if n != 1:
            raise TLVError("single-byte tag has extra bytes", tag)
    else:
        if n < 2 or any(b & 0x80 == 0 for b in raw[1 : n - 1]) or raw[n - 1] & 0x80:
            raise TLVError("malformed multi-byte tag", tag)
    return raw


def _length_bytes(n: int, tag: str) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return bytes((0x82, n >> 8, n & 0xFF))
    if n <= 0xFFFFFF:
        return bytes((0x83, n >> 16, (n >> 8) & 0xFF, n & 0xFF))
    raise TLVError(f"value of {n} bytes too long", tag)


def encode(items: Iterable[tuple[str, bytes | str]] | Mapping[str, bytes | str]) -> bytes:
    """Encode ``[(tag, value), ...]`` or ``{tag: value}``; values are bytes or hex strings."""
    pairs = items.items() if isinstance(items, Mapping) else items
    out = bytearray()
    for tag, value in pairs:
        raw_tag = _tag_bytes(tag)
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                raise TLVError("value is not a hex string", tag.upper()) from None
        elif not isinstance(value, (bytes, bytearray, memoryview)):
            raise TLVError(f"value must be bytes or hex str, not {type(value).__name__}", tag.upper())
        out += raw_tag
        out += _length_bytes(len(value), tag.upper())
        out += value
    return bytes(out)


def select(data: bytes | bytearray | memoryview, tags: Iterable[str]) -> bytes:
    """Re-encode only the top-level objects whose tag is in ``tags``, in their original order.

    E.g. cut a request's field 55 down to the reversal tag set.
    """
    wanted = {t.upper() for t in tags}
    return encode([(t, v) for t, v in decode(data) if t in wanted])
