"""posswitch's private core: ISO 8583 codec, BER-TLV, framing and payment crypto.

No asyncio, no network I/O, no configuration lives here; the one module that touches a file is
``_fastcore.sqlbatch``, which runs a journal writer's SQLite transaction with the GIL released.
Each public module (``_fastcore.iso8583``, ``_fastcore.tlv``, ``_fastcore.framing``,
``_fastcore.crypto``; ``_fastcore.fields`` for its numeric-field scan; ``_fastcore.sqlbatch``) is a
selector over two twins
with one API: a compiled
Cython module ``_fastcore._<name>`` and a pure-Python module
``_fastcore._<name>_py``.  ``POSSWITCH_NO_EXTENSIONS=1`` selects the pure twins.
"""

from __future__ import annotations

from ._compat import FALLBACKS, NO_EXTENSIONS

#: "py" when the pure twins were requested, else "c".  Which twin each
#: selector actually loaded is in its ``IMPLEMENTATION`` attribute.
IMPLEMENTATION = "py" if NO_EXTENSIONS else "c"

__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "FALLBACKS"]
