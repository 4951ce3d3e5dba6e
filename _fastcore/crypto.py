"""Payment cryptography for posswitch: PIN blocks, MACs, KCVs, key variants, DUKPT, EMV.

This is the selector: it re-exports the compiled twin ``_fastcore._crypto``
(Cython) or, with ``POSSWITCH_NO_EXTENSIONS=1`` or when it is not built, the
pure-Python twin ``_fastcore._crypto_py``.  Both twins have the same API and
pass the same tests; the block ciphers always come from pycryptodome.
``IMPLEMENTATION`` says which twin was loaded (``"c"`` or ``"py"``).
See ``docs/crypto.md``.
"""

from __future__ import annotations

from ._compat import implementation_of, load

_impl = load("crypto")
IMPLEMENTATION: str = implementation_of(_impl)

__all__ = list(_impl.__all__) + ["IMPLEMENTATION"]
globals().update({name: getattr(_impl, name) for name in _impl.__all__})
