# cython: language_level=3, annotation_typing=False
"""BER-TLV for field 55, compiled twin (pure twin: ``_fastcore/_tlv_py.py``: same API, contract and docs)."""

from cpython.bytes cimport PyBytes_FromStringAndSize

from collections.abc import Iterable, Mapping

from .errors import TLVError

__all__ = ["decode", "decode_dict", "decode_nested", "encode", "select", "is_constructed", "MAX_TAG_LEN"]

MAX_TAG_LEN = 4

cdef dict _TAG_CACHE = {}


cdef str _tag_str(const unsigned char* p, Py_ssize_t start, Py_ssize_t stop):
    cdef unsigned long key = stop - start
    cdef Py_ssize_t i
    for i in range(start, stop):
        key = (key << 8) | p[i]
    s = _TAG_CACHE.get(key)
    if s is None:
        s = PyBytes_FromStringAndSize(<const char*>(p + start), stop - start).hex().upper()
        if len(_TAG_CACHE) < 4096:
            _TAG_CACHE[key] = s
    return <str>s


cdef str _read_one(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                   bint* constructed, Py_ssize_t* vs, Py_ssize_t* ve):
    """Parse tag and length at pos; return the tag, store constructed / value start / value end."""
    cdef Py_ssize_t start = pos, len_at, n, k, i
    cdef unsigned char first = p[pos], b
    if first == 0x00:
        raise TLVError("invalid tag byte 00", "00", start)
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= end:
                raise TLVError("truncated tag", _tag_str(p, start, pos), start)
            b = p[pos]
            pos += 1
            if pos - start > MAX_TAG_LEN:
                raise TLVError(f"tag longer than {MAX_TAG_LEN} bytes", _tag_str(p, start, pos), start)
            if not b & 0x80:
                break
    tag = _tag_str(p, start, pos)
    if pos >= end:
        raise TLVError("missing length", tag, pos)
    n = p[pos]
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
        n = 0
        for i in range(k):
            n = (n << 8) | p[pos + i]
        pos += k
    if n > end - pos:
        raise TLVError(f"value of {n} bytes runs past the data ({end - pos} bytes left)", tag, pos)
    constructed[0] = (first & 0x20) != 0
    vs[0] = pos
    ve[0] = pos + n
    return tag


def decode(data):
    """Top-level TLV objects in order, duplicates kept, constructed values raw."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* p = <const unsigned char*>buf
    cdef Py_ssize_t end = len(buf), pos = 0, vs, ve
    cdef str tag
    cdef bint constructed
    cdef list out = []
    while pos < end:
        tag = _read_one(p, pos, end, &constructed, &vs, &ve)
        out.append((tag, PyBytes_FromStringAndSize(<const char*>(p + vs), ve - vs)))
        pos = ve
    return out


def decode_dict(data):
    """Top-level objects as ``{tag: value}``; a duplicate tag raises TLVError at its offset."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* p = <const unsigned char*>buf
    cdef Py_ssize_t end = len(buf), pos = 0, vs, ve
    cdef str tag
    cdef bint constructed
    cdef dict out = {}
    while pos < end:
        tag = _read_one(p, pos, end, &constructed, &vs, &ve)
        if tag in out:
            raise TLVError("duplicate tag", tag, pos)
        out[tag] = PyBytes_FromStringAndSize(<const char*>(p + vs), ve - vs)
        pos = ve
    return out


cdef list _walk(bytes buf, Py_ssize_t pos, Py_ssize_t end):
    cdef const unsigned char* p = <const unsigned char*>buf
    cdef Py_ssize_t vs, ve
    cdef str tag
    cdef bint constructed
    cdef list items = []
    while pos < end:
        tag = _read_one(p, pos, end, &constructed, &vs, &ve)
        if constructed:
            items.append((tag, _walk(buf, vs, ve)))
        else:
            items.append((tag, PyBytes_FromStringAndSize(<const char*>(p + vs), ve - vs)))
        pos = ve
    return items


def decode_nested(data):
    """Like decode, but constructed values are decoded recursively into lists."""
    cdef bytes buf = data if type(data) is bytes else bytes(data)
    return _walk(buf, 0, len(buf))


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


cdef dict _TAG_BYTES = {}


def encode(items):
    """Encode ``[(tag, value), ...]`` or ``{tag: value}``; values are bytes or hex strings."""
    cdef bytearray out = bytearray()
    cdef Py_ssize_t n
    cdef unsigned char lb[4]
    pairs = items.items() if isinstance(items, Mapping) else items
    for tag, value in pairs:
        raw_tag = _TAG_BYTES.get(tag)
        if raw_tag is None:
            raw_tag = _tag_bytes(tag)
            if len(_TAG_BYTES) < 4096:
                _TAG_BYTES[tag] = raw_tag
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                raise TLVError("value is not a hex string", tag.upper()) from None
        elif not isinstance(value, (bytes, bytearray, memoryview)):
            raise TLVError(f"value must be bytes or hex str, not {type(value).__name__}", tag.upper())
        n = len(value)
        out += <bytes>raw_tag
        if n < 0x80:
            lb[0] = <unsigned char>n
            out += PyBytes_FromStringAndSize(<const char*>lb, 1)
        elif n <= 0xFF:
            lb[0] = 0x81
            lb[1] = <unsigned char>n
            out += PyBytes_FromStringAndSize(<const char*>lb, 2)
        elif n <= 0xFFFF:
            lb[0] = 0x82
            lb[1] = <unsigned char>(n >> 8)
            lb[2] = <unsigned char>(n & 0xFF)
            out += PyBytes_FromStringAndSize(<const char*>lb, 3)
        elif n <= 0xFFFFFF:
            lb[0] = 0x83
            lb[1] = <unsigned char>(n >> 16)
            lb[2] = <unsigned char>((n >> 8) & 0xFF)
            lb[3] = <unsigned char>(n & 0xFF)
            out += PyBytes_FromStringAndSize(<const char*>lb, 4)
        else:
            raise TLVError(f"value of {n} bytes too long", tag.upper())
        out += value
    return bytes(out)


def select(data: bytes | bytearray | memoryview, tags: Iterable[str]) -> bytes:
    """Re-encode only the top-level objects whose tag is in ``tags``, in their original order.

    E.g. cut a request's field 55 down to the reversal tag set.
    """
    wanted = {t.upper() for t in tags}
    return encode([(t, v) for t, v in decode(data) if t in wanted])
