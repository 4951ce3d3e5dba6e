"""Batches of SQLite statements in one transaction, run with the GIL released (journal writer).

Selector over the compiled twin ``_fastcore._sqlbatch`` and the pure twin ``_fastcore._sqlbatch_py``
(``POSSWITCH_NO_EXTENSIONS=1`` picks the pure one).  Contract: see ``_sqlbatch_py``.
"""

from __future__ import annotations

from ._compat import implementation_of, load

_impl = load("sqlbatch")

IMPLEMENTATION: str = implementation_of(_impl)

BatchConnection = _impl.BatchConnection
BatchError = _impl.BatchError

__all__ = ["IMPLEMENTATION", "BatchConnection", "BatchError"]
