"""BER-TLV encode/decode for field 55 (EMV data).

Selector over the compiled twin ``_fastcore._tlv`` and the pure twin ``_fastcore._tlv_py``
(``POSSWITCH_NO_EXTENSIONS=1`` picks the pure one).  Contract and representation: see ``_tlv_py``.
"""

from __future__ import annotations

from ._compat import implementation_of, load

_impl = load("tlv")

IMPLEMENTATION: str = implementation_of(_impl)

MAX_TAG_LEN: int = _impl.MAX_TAG_LEN
decode = _impl.decode
decode_dict = _impl.decode_dict
decode_nested = _impl.decode_nested
encode = _impl.encode
select = _impl.select
is_constructed = _impl.is_constructed

__all__ = ["IMPLEMENTATION", "MAX_TAG_LEN", "decode", "decode_dict", "decode_nested", "encode", "select",
           "is_constructed"]
