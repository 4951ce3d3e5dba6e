"""BER-TLV for the terminal's EMV kernel: template walking, DOLs, field 55 encoding.

Field 55 is encoded/decoded through ``_fastcore.tlv`` once the dialect engineer's
module is present and passes a known-answer self-check, through ``pyemv.tlv``
otherwise (:data:`BACKEND` says which).  Card answers are walked with
:func:`iter_tlv`, which keeps repeated tags (a PPSE lists one ``61`` template per
application, which a dict-based decoder would collapse) and reports the tag and
offset of any malformed element.  DOLs (PDOL, CDOL1/2: tag + length, no value)
are parsed by :func:`parse_dol`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from _fastcore.errors import TLVError

_SAMPLE = {"9F26": bytes.fromhex("0123456789ABCDEF"), "9F27": b"\x80", "95": bytes(5)}
_SAMPLE_HEX = "9F26080123456789ABCDEF9F2701809505" + "00" * 5


def _pick_backend() -> tuple[str, object, object]:
    try:
        from _fastcore import tlv as ft  # type: ignore[attr-defined]

        enc, dec = ft.encode, ft.decode
        if enc(_SAMPLE).hex().upper() == _SAMPLE_HEX and dict(dec(bytes.fromhex(_SAMPLE_HEX))) == _SAMPLE:
            return "_fastcore.tlv", enc, dec
    except Exception:  # noqa: BLE001 - absent or a different API: use pyemv
        pass
    from pyemv import tlv as pt

    return "pyemv.tlv", pt.encode, lambda data: pt.decode(data, flatten=True)


BACKEND, _encode, _decode = _pick_backend()


def encode(tags: Mapping[str, bytes]) -> bytes:
    """Encode ``{"9F26": b"...", ...}`` (primitive tags, insertion order kept) as BER-TLV."""
    return bytes(_encode(dict(tags)))  # type: ignore[operator]


def decode(data: bytes) -> dict[str, bytes]:
    """Decode a flat BER-TLV string such as field 55 into ``{tag_hex: value}``."""
    try:
        return dict(_decode(bytes(data)))  # type: ignore[operator]
    except TLVError:
        raise
    except Exception as exc:  # pyemv.tlv.DecodeError -> our error type
        raise TLVError(f"field 55 does not decode ({exc})") from exc


def _read_tag(data: bytes, pos: int) -> tuple[str, int, bool]:
    start = pos
    if pos >= len(data):
        raise TLVError("truncated tag", offset=pos)
    first = data[pos]
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TLVError("truncated multi-byte tag", tag=data[start:pos].hex().upper(), offset=start)
            b = data[pos]
            pos += 1
            if not b & 0x80:
                break
            if pos - start >= 4:
                raise TLVError("tag longer than 4 bytes", tag=data[start:pos].hex().upper(), offset=start)
    return data[start:pos].hex().upper(), pos, bool(first & 0x20)


def _read_len(data: bytes, pos: int, tag: str) -> tuple[int, int]:
    if pos >= len(data):
        raise TLVError("missing length", tag=tag, offset=pos)
    b = data[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    n = b & 0x7F
    if n == 0 or n > 3 or pos + n > len(data):
        raise TLVError(f"bad length byte {b:02X}", tag=tag, offset=pos - 1)
    return int.from_bytes(data[pos : pos + n], "big"), pos + n


def iter_tlv(data: bytes, base: int = 0) -> Iterator[tuple[str, bytes, bool, int]]:
    """Yield ``(tag, value, constructed, offset)`` for each top-level element; skips 00/FF padding."""
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] in (0x00, 0xFF):
            pos += 1
            continue
        off = pos
        tag, pos, constructed = _read_tag(data, pos)
        length, pos = _read_len(data, pos, tag)
        if pos + length > n:
            raise TLVError(f"value of {length} bytes runs past the end ({n - pos} left)", tag=tag, offset=base + off)
        yield tag, bytes(data[pos : pos + length]), constructed, base + off
        pos += length


def find_all(data: bytes, tag: str) -> list[bytes]:
    """Every value of ``tag`` at any depth, in order (walks constructed tags recursively)."""
    out: list[bytes] = []
    tag = tag.upper()
    stack = [(data, 0)]
    while stack:
        chunk, base = stack.pop(0)
        for t, v, constructed, off in iter_tlv(chunk, base):
            if t == tag:
                out.append(v)
            if constructed:
                stack.append((v, off))
    return out


def find(data: bytes, tag: str) -> bytes | None:
    values = find_all(data, tag)
    return values[0] if values else None


def flatten(data: bytes) -> dict[str, bytes]:
    """All primitive tags at any depth (first occurrence wins)."""
    out: dict[str, bytes] = {}

    def walk(chunk: bytes, base: int) -> None:
        for t, v, constructed, off in iter_tlv(chunk, base):
            if constructed:
                walk(v, off)
            else:
                out.setdefault(t, v)

    walk(data, 0)
    return out


def parse_dol(dol: bytes) -> list[tuple[str, int]]:
    """``9F02 06 9F03 06 ...`` -> ``[("9F02", 6), ("9F03", 6), ...]``."""
    out: list[tuple[str, int]] = []
    pos = 0
    while pos < len(dol):
        tag, pos, _ = _read_tag(dol, pos)
        if pos >= len(dol):
            raise TLVError("DOL entry without length", tag=tag, offset=pos)
        out.append((tag, dol[pos]))
        pos += 1
    return out


def build_dol_data(dol: list[tuple[str, int]], values: Mapping[str, bytes]) -> bytes:
    """Concatenate values for a DOL (EMV Book 3 §5.4): missing -> zeros, numeric too long -> leftmost
    bytes kept, too short -> padded (numeric tags left with zeros, others right)."""
    out = bytearray()
    for tag, length in dol:
        v = values.get(tag, b"")
        if len(v) > length:
            v = v[len(v) - length :] if tag in _NUMERIC else v[:length]
        elif len(v) < length:
            pad = bytes(length - len(v))
            v = pad + v if tag in _NUMERIC else v + pad
        out += v
    return bytes(out)


# tags of format n (right-aligned BCD): pad/truncate on the left
_NUMERIC = {"9F02", "9F03", "5F2A", "9F1A", "9A", "9C", "9F21", "9F41", "5F36", "9F42"}


def tl(tag: str, value: bytes) -> bytes:
    """One primitive or constructed element (for building card answers)."""
    t = bytes.fromhex(tag)
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n < 0x100:
        ln = b"\x81" + bytes([n])
    else:
        ln = b"\x82" + n.to_bytes(2, "big")
    return t + ln + value
