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
_HEX = "0123456789abcdef"


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


def split_payload(payload: bytes, tpdu_len: int = TPDU_LEN,
                  header_len: int = HEADER_LEN) -> tuple[bytes, bytes, bytes]:
    """Split a payload (no length prefix) into ``(tpdu, header, body)``.

    With a 5-byte TPDU its first byte must be ``0x60``.  The body must not be empty.
    Offsets in errors count from the start of the payload.
    """
    need = tpdu_len + header_len
    if len(payload) <= need:
        raise FramingError(
            f"payload of {len(payload)} bytes too short for TPDU ({tpdu_len}) + header ({header_len}) + message",
            len(payload))
    if tpdu_len == TPDU_LEN and payload[0] != TPDU_ID:
        raise FramingError(f"TPDU id 0x{payload[0]:02x} is not 0x60", 0)
    return bytes(payload[:tpdu_len]), bytes(payload[tpdu_len:need]), bytes(payload[need:])


def parse_frame(frame: bytes, tpdu_len: int = TPDU_LEN,
                header_len: int = HEADER_LEN) -> tuple[bytes, bytes, bytes]:
    """Parse one complete frame (length prefix included) into ``(tpdu, header, body)``.

    The length prefix must count exactly the bytes after it.  Offsets in errors count from the
    start of the frame.
    """
    if len(frame) < LEN_SIZE:
        raise FramingError("frame shorter than its 2-byte length", 0)
    n = (frame[0] << 8) | frame[1]
    if n != len(frame) - LEN_SIZE:
        raise FramingError(f"length prefix {n} does not match {len(frame) - LEN_SIZE} bytes that follow", 0)
    try:
        return split_payload(frame[LEN_SIZE:], tpdu_len, header_len)
    except FramingError as exc:
        raise FramingError(str(exc).rsplit(": offset", 1)[0], (exc.offset or 0) + LEN_SIZE) from None


def build_frame(body: bytes, tpdu: bytes = b"", header: bytes = b"") -> bytes:
    """``LEN + tpdu + header + body``; the length counts everything after itself."""
    n = len(tpdu) + len(header) + len(body)
    if n == 0 or n > 0xFFFF:
        raise FramingError(f"cannot frame {n} bytes (1..65535)")
    return bytes(((n >> 8) & 0xFF, n & 0xFF)) + bytes(tpdu) + bytes(header) + bytes(body)


def _check_tpdu(tpdu: bytes) -> None:
    if len(tpdu) != TPDU_LEN:
        raise FramingError(f"TPDU must be {TPDU_LEN} bytes, got {len(tpdu)}")
    if tpdu[0] != TPDU_ID:
        raise FramingError(f"TPDU id 0x{tpdu[0]:02x} is not 0x60", 0)


def swap_tpdu(tpdu: bytes) -> bytes:
    """Reply TPDU: destination and originator addresses swapped (``6005250000`` -> ``6000000525``)."""
    _check_tpdu(tpdu)
    return bytes(tpdu[0:1]) + bytes(tpdu[3:5]) + bytes(tpdu[1:3])


def make_tpdu(destination: int, originator: int = 0) -> bytes:
    """TPDU ``60 DDDD SSSS`` from two 16-bit addresses (the NII is usually written in hex: 0x0003)."""
    if not (0 <= destination <= 0xFFFF and 0 <= originator <= 0xFFFF):
        raise ValueError("TPDU addresses are 16-bit")
    return bytes((TPDU_ID,)) + destination.to_bytes(2, "big") + originator.to_bytes(2, "big")


def tpdu_addresses(tpdu: bytes) -> tuple[int, int]:
    """``(destination, originator)`` of a TPDU."""
    _check_tpdu(tpdu)
    return (tpdu[1] << 8) | tpdu[2], (tpdu[3] << 8) | tpdu[4]


def header_digits(header: bytes) -> str:
    """The 12 header digits as text (lower-case hex nibbles: digit 6 may be ``b``/``c``)."""
    if len(header) != HEADER_LEN:
        raise FramingError(f"header must be {HEADER_LEN} bytes, got {len(header)}")
    return bytes(header).hex()


def get_request_digit(header: bytes) -> str:
    """Digit 6 of the header, the host's processing request (``"0"`` none, ``"3"`` sign on again, ...)."""
    if len(header) != HEADER_LEN:
        raise FramingError(f"header must be {HEADER_LEN} bytes, got {len(header)}")
    return _HEX[header[2] & 0x0F]


def set_request_digit(header: bytes, digit: str | int) -> bytes:
    """Copy of ``header`` with digit 6 (processing request) set to ``digit`` (0-15 or one hex char)."""
    if len(header) != HEADER_LEN:
        raise FramingError(f"header must be {HEADER_LEN} bytes, got {len(header)}")
    value = int(digit, 16) if isinstance(digit, str) and len(digit) == 1 else digit
    if not isinstance(value, int) or not 0 <= value <= 15:
        raise ValueError(f"processing request digit must be one hex digit, got {digit!r}")
    out = bytearray(header)
    out[2] = (out[2] & 0xF0) | value
    return bytes(out)


def make_header(app_type: str = "60", version: str = "31", status: str = "0", request: str = "0",
                sub_version: str = "000000") -> bytes:
    """Build a header from its parts (2 + 2 + 1 + 1 + 6 digits)."""
    digits = f"{app_type}{version}{status}{request}{sub_version}"
    if (len(app_type), len(version), len(status), len(request), len(sub_version)) != (2, 2, 1, 1, 6):
        raise ValueError(f"header parts have wrong widths: {digits!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"header digits must be hex nibbles: {digits!r}") from None
