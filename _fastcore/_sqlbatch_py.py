"""Pure-Python twin of ``_fastcore._sqlbatch``: a batch of SQLite statements in one transaction.

:class:`BatchConnection` runs ``BEGIN``, a list of parameterised statements and ``COMMIT`` as one call.
The compiled twin does all of it with the GIL released (one GIL hand-off per batch instead of several
per statement, which is what a writer thread beside a busy event loop pays for with the ``sqlite3``
module); this twin does the same through the ``sqlite3`` module and is the reference for its results.

Contract (both twins):

* ``run(statements, params)`` executes ``begin`` (unless None), then ``statements[i]`` with
  ``params[i]`` for every ``i`` (rows a statement returns are read and discarded), then ``COMMIT``
  (unless ``commit=False``).  It returns one ``(lastrowid, changes)`` per statement:
  ``sqlite3_last_insert_rowid()`` and ``sqlite3_changes()`` right after that statement (``changes`` is
  meaningful for INSERT / UPDATE / DELETE).
* Parameters are positional (``?``) and may be ``None``, ``int`` (64-bit; ``bool`` counts as int),
  ``float``, ``str`` or ``bytes``.
* Any failure (SQL that does not prepare, a constraint, a wrong number or type of parameters, a busy
  database, a failed ``BEGIN`` or ``COMMIT``) rolls back whatever the call began and raises
  :class:`BatchError` with ``index``: the failing statement's position, ``-1`` for ``begin`` and
  ``len(statements)`` for the ``COMMIT``.  Nothing of the batch is then in the database.
* ``statements`` and ``params`` of different lengths raise ``ValueError`` before anything runs.
* One connection is used by one thread at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_PARAM_TYPES = (type(None), int, float, str, bytes)


class BatchError(Exception):
    """A statement of a batch failed; the batch was rolled back.  ``index`` says which statement
    (``-1``: the ``BEGIN``, ``len(statements)``: the ``COMMIT``), ``code`` is SQLite's result code."""

    def __init__(self, index: int, code: int, message: str) -> None:
        super().__init__(f"statement {index}: {message}")
        self.index = index
        self.code = code
        self.message = message


def _options(synchronous: str, busy_timeout_ms: int) -> str:
    mode = str(synchronous).upper()
    if mode not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}")
    if int(busy_timeout_ms) < 0:
        raise ValueError("busy_timeout_ms must be >= 0")
    return mode


class BatchConnection:
    """One SQLite connection that runs whole transactions in one call (see the module docstring).

    ``pragmas`` are run once after opening, in order (e.g. ``("wal_autocheckpoint=0",)``); the
    connection itself sets ``busy_timeout``, ``synchronous`` and ``foreign_keys``.
    """

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000,
                 foreign_keys: bool = True, pragmas: Sequence[str] = ()) -> None:
        mode = _options(synchronous, busy_timeout_ms)
        self.path = str(path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=int(busy_timeout_ms) / 1000.0)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            for pragma in pragmas:
                conn.execute(f"PRAGMA {pragma}").fetchall()
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, statements: Sequence[str], params: Sequence[Sequence[Any]], *,
            begin: str | None = "BEGIN IMMEDIATE", commit: bool = True) -> list[tuple[int, int]]:
        conn = self._conn
        if conn is None:
            raise BatchError(-1, 21, "the connection is closed")  # SQLITE_MISUSE
        if len(statements) != len(params):
            raise ValueError(f"{len(statements)} statements but {len(params)} parameter sequences")
        began = False
        index = -1
        try:
            if begin is not None:
                conn.execute(begin)
                began = conn.in_transaction
            results: list[tuple[int, int]] = []
            for index, (sql, values) in enumerate(zip(statements, params, strict=True)):
                if not isinstance(sql, str):
                    raise BatchError(index, 21, f"statement must be str, not {type(sql).__name__}")
                values = tuple(values)
                for pos, value in enumerate(values, 1):
                    if not isinstance(value, _PARAM_TYPES):
                        raise BatchError(index, 20, f"parameter {pos}: type {type(value).__name__!r} "
                                                    "is not supported")  # SQLITE_MISMATCH
                    if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
                        raise BatchError(index, 20, f"parameter {pos}: Python int too large to convert to C long")
                cur = conn.execute(sql, values)
                for _ in cur:  # rows are read and dropped, as the compiled twin steps through them
                    pass
                changes = cur.rowcount  # sqlite3_changes() for DML; -1 otherwise, where SQLite repeats
                if changes < 0:  # the last DML statement's count
                    changes = conn.execute("SELECT changes()").fetchone()[0]
                results.append((cur.lastrowid or 0, changes))
            index = len(statements)
            if commit:
                conn.execute("COMMIT")
            return results
        except BatchError:
            _rollback(conn, began)
            raise
        except sqlite3.Error as exc:
            _rollback(conn, began)
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None:  # the module's own checks: a wrong number of bindings is SQLITE_RANGE
                code = 25 if "Incorrect number of bindings" in str(exc) else 1
            raise BatchError(index, code & 0xFF, str(exc)) from exc


def _rollback(conn: sqlite3.Connection, began: bool) -> None:
    if began and conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
