"""Selector for the ISO 8583 codec: a drop-in for pyiso8583 4.0.1's ``encode``/``decode``.

``encode(doc, spec) -> (bytearray, doc_enc)`` and ``decode(data, spec) -> (doc_dec, doc_enc)``
behave exactly like ``iso8583.encode`` / ``iso8583.decode`` (results, ``doc_dec`` mutations and
exceptions).  ``Codec(spec)`` is the hot-loop API (``decode(data) -> fields``,
``encode(fields) -> bytes``).  The compiled twin ``_fastcore._iso8583`` is used unless
``POSSWITCH_NO_EXTENSIONS`` is set; the pure twin is ``_fastcore._iso8583_py``.
See ``docs/codec.md``.
"""

from __future__ import annotations

from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError
from iso8583.tools import pp  # pyiso8583's pretty printer, so `import ... as iso8583` swaps fully

from ._compat import implementation_of, load

_impl = load("iso8583")

encode = _impl.encode
decode = _impl.decode
invalidate = _impl.invalidate
Codec = _impl.Codec
FieldNotInSpecDecodeError = _impl.FieldNotInSpecDecodeError
FieldNotInSpecEncodeError = _impl.FieldNotInSpecEncodeError
IMPLEMENTATION: str = implementation_of(_impl)

__all__ = [
    "IMPLEMENTATION",
    "Codec",
    "DecodeError",
    "EncodeError",
    "FieldNotInSpecDecodeError",
    "FieldNotInSpecEncodeError",
    "decode",
    "encode",
    "invalidate",
    "pp",
]
