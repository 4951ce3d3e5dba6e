"""POS link framing: 2-byte length, TPDU, header; incremental stream splitter.

Selector over the compiled twin ``_fastcore._framing`` and the pure twin ``_fastcore._framing_py``
(``POSSWITCH_NO_EXTENSIONS=1`` picks the pure one).  API and vocabulary: see ``_framing_py``.
"""

from __future__ import annotations

from ._compat import implementation_of, load

_impl = load("framing")

IMPLEMENTATION: str = implementation_of(_impl)

LEN_SIZE: int = _impl.LEN_SIZE
TPDU_LEN: int = _impl.TPDU_LEN
HEADER_LEN: int = _impl.HEADER_LEN
TPDU_ID: int = _impl.TPDU_ID
MAX_FRAME: int = _impl.MAX_FRAME
FrameSplitter = _impl.FrameSplitter
split_payload = _impl.split_payload
parse_frame = _impl.parse_frame
build_frame = _impl.build_frame
swap_tpdu = _impl.swap_tpdu
make_tpdu = _impl.make_tpdu
tpdu_addresses = _impl.tpdu_addresses
header_digits = _impl.header_digits
get_request_digit = _impl.get_request_digit
set_request_digit = _impl.set_request_digit
make_header = _impl.make_header

__all__ = [
    "IMPLEMENTATION",
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
