# cython: language_level=3, annotation_typing=False
"""POS link framing, compiled twin (pure twin: ``_fastcore/_framing_py.py``, same API and docs).

Wire layout: ``| LEN 2 B big-endian | TPDU 5 B | HEADER 6 B | ISO 8583 message |``;
host links use the 2-byte length alone (``tpdu_len=0, header_len=0``).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize

from .errors import FramingError

__all__ = [
    "LEN_SIZE",
    "TPDU_LEN",
    "HEADER_LEN",
    "TPDU_ID",
    "MAX_FRAME",
    "FrameSplitter",
    "split_payload",
    "parse_frame",
    "build_frame",
    "swap_tpdu",
    "make_tpdu",
    "tpdu_addresses",
    "header_digits",
    "get_request_digit",
    "set_request_digit",
    "make_header",
]

LEN_SIZE = 2
TPDU_LEN = 5
HEADER_LEN = 6
TPDU_ID = 0x60
#: Default largest payload a splitter accepts (a POS message is < 1 KiB; 8583 field 62/55 max ~1 KiB).
MAX_FRAME = 4096


cdef class FrameSplitter:
    """Incremental splitter of a 2-byte-length-prefixed stream (compiled twin).

    Same contract as the pure twin: ``feed(data)`` returns the completed payloads; a zero,
    too-small or too-large length raises FramingError (``offset`` = stream position of the length
    prefix, ``frames`` = payloads completed before it) and breaks the splitter.
    """

    cdef public Py_ssize_t max_frame
    cdef public Py_ssize_t min_frame
    cdef bytearray _buf
    cdef Py_ssize_t _consumed
    cdef object _error

    def __init__(self, Py_ssize_t max_frame=MAX_FRAME, Py_ssize_t min_frame=1):
        if not (1 <= min_frame <= max_frame <= 0xFFFF):
            raise ValueError(f"need 1 <= min_frame <= max_frame <= 65535, got {min_frame}, {max_frame}")
        self.max_frame = max_frame
        self.min_frame = min_frame
        self._buf = bytearray()
        self._consumed = 0
        self._error = None

    @property
    def buffered(self):
        """Bytes received but not yet returned as a payload."""
        return len(self._buf)

    @property
    def offset(self):
        """Stream offset of the next frame's length prefix."""
        return self._consumed

    cdef _fail(self, Py_ssize_t n, Py_ssize_t at, list frames):
        if n == 0:
            msg = "zero frame length"
        elif n < self.min_frame:
            msg = f"frame length {n} below minimum {self.min_frame}"
        else:
            msg = f"frame length {n} exceeds maximum {self.max_frame}"
        err = FramingError(msg, at)
        err.frames = frames
        self._error = err
        return err

    def feed(self, data) -> list:
        cdef const unsigned char* p
        cdef Py_ssize_t pos = 0, end, n
        cdef list frames = []
        cdef bytes chunk
        if self._error is not None:
            raise self._error
        if len(self._buf) == 0 and type(data) is bytes:
            # fast path: parse straight out of the caller's bytes, buffer only the tail
            chunk = <bytes>data
            p = <const unsigned char*>chunk
            end = len(chunk)
            while end - pos >= 2:
                n = (p[pos] << 8) | p[pos + 1]
                if n < self.min_frame or n > self.max_frame:
                    self._buf += chunk[pos:]
                    self._consumed += pos
                    raise self._fail(n, self._consumed, frames)
                if end - pos - 2 < n:
                    break
                frames.append(PyBytes_FromStringAndSize(<const char*>(p + pos + 2), n))
                pos += 2 + n
            if pos < end:
                self._buf += chunk[pos:] if pos else chunk
            self._consumed += pos
            return frames
        self._buf += data
        p = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
        end = len(self._buf)
        while end - pos >= 2:
            n = (p[pos] << 8) | p[pos + 1]
            if n < self.min_frame or n > self.max_frame:
                del self._buf[:pos]
                self._consumed += pos
                raise self._fail(n, self._consumed, frames)
            if end - pos - 2 < n:
                break
            frames.append(PyBytes_FromStringAndSize(<const char*>(p + pos + 2), n))
            pos += 2 + n
        if pos:
            del self._buf[:pos]
            self._consumed += pos
        return frames


# The frame helpers below the splitter are plain byte slicing with no loop to compile: the compiled
# twin shares the pure twin's code rather than keeping a copy of it.
from ._framing_py import (  # noqa: E402
    build_frame,
    get_request_digit,
    header_digits,
    make_header,
    make_tpdu,
    parse_frame,
    set_request_digit,
    split_payload,
    swap_tpdu,
    tpdu_addresses,
)
