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
  meaningful for INSERT / UPDATE / DELETE; other statements repeat the last DML statement's count).
  Both are the connection's values, which a rollback does not undo: after a failed batch the next
  statements report what the statements of it that ran left behind (the rowid of a rolled-back INSERT
  included), as with SQLite itself; a batch refused by the argument checks ran nothing.
* **Arguments are checked for the whole batch before anything runs** (no ``BEGIN``, nothing executed);
  the first statement that fails a check raises ``BatchError(i, code, message)``:

  - the statement is not a ``str`` (a ``str`` subclass counts as its text), cannot be encoded to UTF-8
    (a lone surrogate) or contains a NUL character ("the query contains a null character"):
    ``SQLITE_MISUSE`` (21); its UTF-8 text is 2 GiB or more: ``SQLITE_TOOBIG`` (18);
  - ``params[i]`` is not a sequence: ``SQLITE_MISUSE`` (21).  A sequence is a ``tuple``, a ``list`` or
    any other :class:`collections.abc.Sequence` (it is copied into a tuple) **except** ``str``,
    ``bytes``, ``bytearray`` and ``memoryview``; a ``dict`` (named parameters), a ``str``, ``None`` or
    an iterator is rejected rather than turned into a tuple of its keys / characters / items;
  - a parameter that is not ``None``, ``int`` (``bool`` included), ``float``, ``str`` or ``bytes``
    (``bytearray``, ``memoryview``, ``Decimal``... are not supported), an ``int`` outside 64 bits, or a
    ``str`` that cannot be encoded to UTF-8: ``SQLITE_MISMATCH`` (20); a ``str`` / ``bytes`` of 2 GiB
    or more: ``SQLITE_TOOBIG`` (18).  Subclasses of the supported types are bound as their base value
    (their own ``__int__`` / ``__str__`` / ... are not called).

  ``begin`` is checked as a statement (index ``-1``).  ``statements`` and ``params`` of different
  lengths raise ``ValueError``.
* **Everything SQLite reports comes in statement order**: each statement is prepared when its turn
  comes (so a table created by an earlier statement of the batch can be used by a later one), then its
  text and parameters are checked as the ``sqlite3`` module (CPython 3.11) does, then it runs:

  - after its first statement, the text may hold only white space and comments (``-- ...`` to the end
    of the line, ``/* ... */``); anything else, a second ``;`` included, is ``SQLITE_MISUSE`` (21)
    "You can only execute one statement at a time.";
  - a text that is empty or only white space / comments / ``;`` is a no-op that still reports
    ``(lastrowid, changes)``;
  - a number of parameters other than the statement's is ``SQLITE_RANGE`` (25) "Incorrect number of
    bindings supplied. The current statement uses N, and there are M supplied.";
  - anything SQLite refuses (SQL that does not prepare, a constraint, a value SQLite finds too big, a
    busy database, a failed ``BEGIN`` or ``COMMIT``) is SQLite's own result code (``& 0xFF``).

  Any such failure rolls back the transaction the call began and raises :class:`BatchError` with
  ``index``: the failing statement's position, ``-1`` for ``begin`` and ``len(statements)`` for the
  ``COMMIT``.  Nothing of the batch is then in the database.  A call that began nothing
  (``begin=None``) rolls nothing back.
* ``BatchConnection(path)`` takes a ``str``, ``bytes`` or :class:`os.PathLike` path (the ``path``
  attribute is then its ``str``, :func:`os.fsdecode`);
  a path with a NUL byte raises ``ValueError``; a database that cannot be opened, or a pragma that fails
  (pragmas are checked as statements), raises ``BatchError(-1, code, message)``.
* One connection is used by one thread at a time; ``run`` or ``close`` called while a ``run`` of the
  same connection is in progress (e.g. from a parameter sequence's ``__getitem__``) raises
  ``BatchError(-1, SQLITE_MISUSE)``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
SQLITE_ERROR, SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_MISUSE, SQLITE_RANGE = 1, 18, 20, 21, 25
_INT_MAX = 0x7FFFFFFF  # SQLite takes lengths as C int
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: sequences that are parameter values, not parameter lists
_NOT_PARAMETER_SEQUENCES = (str, bytes, bytearray, memoryview)


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


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (UnicodeEncodeError for a lone surrogate)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _check_sql(index: int, sql: Any) -> str:
    """``sql`` if it can be a statement's text, else BatchError(index, ...) (see the contract)."""
    if not isinstance(sql, str):
        raise BatchError(index, SQLITE_MISUSE, f"statement must be str, not {type(sql).__name__}")
    try:
        size = _utf8_size(sql)
    except UnicodeEncodeError as exc:
        raise BatchError(index, SQLITE_MISUSE, str(exc)) from None
    if "\x00" in sql:
        raise BatchError(index, SQLITE_MISUSE, "the query contains a null character")
    if size >= _INT_MAX:
        raise BatchError(index, SQLITE_TOOBIG, "query string is too large")
    return sql


def _check_params(index: int, values: Any) -> tuple[Any, ...]:
    """``values`` as a tuple of what is bound, else BatchError(index, ...) (see the contract)."""
    if type(values) is not tuple:
        if type(values) is not list and (not isinstance(values, Sequence)
                                         or isinstance(values, _NOT_PARAMETER_SEQUENCES)):
            raise BatchError(index, SQLITE_MISUSE,
                             f"parameters must be a sequence such as a tuple or list, not {type(values).__name__}")
        values = tuple(values)
    checked = None  # a copy, once a value is replaced by its base value
    for pos, value in enumerate(values):
        bound = _check_value(index, pos + 1, value)
        if bound is not value:
            if checked is None:
                checked = list(values)
            checked[pos] = bound
    return values if checked is None else tuple(checked)


def _check_value(index: int, pos: int, value: Any) -> Any:
    """``value`` as it is bound (a subclass as its base type), else BatchError(index, ...)."""
    cls = type(value)
    if value is None or cls is float:
        return value
    if isinstance(value, int):
        if cls is not int:
            value = int.__int__(value)  # bool -> 0 / 1, an IntEnum -> its value
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise BatchError(index, SQLITE_MISMATCH, f"parameter {pos}: Python int too large to convert to "
                                                     "SQLite INTEGER")
    elif isinstance(value, float):
        value = float.__float__(value)
    elif isinstance(value, str):
        if cls is not str:
            value = str.__str__(value)
        try:
            size = _utf8_size(value)
        except UnicodeEncodeError as exc:
            raise BatchError(index, SQLITE_MISMATCH, f"parameter {pos}: {exc}") from None
        if size > _INT_MAX:
            raise BatchError(index, SQLITE_TOOBIG, f"parameter {pos}: string longer than INT_MAX bytes")
    elif isinstance(value, bytes):
        if cls is not bytes:
            value = bytes.__bytes__(value)
        if len(value) > _INT_MAX:
            raise BatchError(index, SQLITE_TOOBIG, f"parameter {pos}: BLOB longer than INT_MAX bytes")
    else:
        raise BatchError(index, SQLITE_MISMATCH, f"parameter {pos}: type {cls.__name__!r} is not supported")
    return value


def _code_of(exc: sqlite3.Error) -> int:
    """SQLite's result code for an exception of the ``sqlite3`` module (its own checks have none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    if str(exc).startswith("Incorrect number of bindings"):
        return SQLITE_RANGE
    if isinstance(exc, sqlite3.ProgrammingError):  # one statement at a time, a NUL in the query, ...
        return SQLITE_MISUSE
    if isinstance(exc, sqlite3.DataError):  # "query string is too large"
        return SQLITE_TOOBIG
    if isinstance(exc, sqlite3.InterfaceError):  # "Error binding parameter": SQLite refused the value's size
        return SQLITE_TOOBIG
    return SQLITE_ERROR


def _drain(cursor: sqlite3.Cursor) -> None:
    """Step through every row (an error on a late row fails the statement, as in the compiled twin)."""
    for _ in cursor:
        pass


class BatchConnection:
    """One SQLite connection that runs whole transactions in one call (see the module docstring).

    ``pragmas`` are run once after opening, in order (e.g. ``("wal_autocheckpoint=0",)``); the
    connection itself sets ``busy_timeout``, ``synchronous`` and ``foreign_keys``.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", busy_timeout_ms: int = 30000,
                 foreign_keys: bool = True, pragmas: Sequence[str] = ()) -> None:
        mode = _options(synchronous, busy_timeout_ms)
        fspath = os.fspath(path)
        self.path = os.fsdecode(fspath)
        if "\x00" in self.path:
            raise ValueError("embedded null byte")
        self._running = False
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(fspath, isolation_level=None, check_same_thread=False,
                                   timeout=int(busy_timeout_ms) / 1000.0)
        except sqlite3.Error as exc:
            raise BatchError(-1, _code_of(exc), f"cannot open {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            for pragma in pragmas:
                _drain(conn.execute(_check_sql(-1, f"PRAGMA {pragma}")))
        except sqlite3.Error as exc:
            conn.close()
            raise BatchError(-1, _code_of(exc), str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        if self._running:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is in use by a call of run()")
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, statements: Sequence[str], params: Sequence[Sequence[Any]], *,
            begin: str | None = "BEGIN IMMEDIATE", commit: bool = True) -> list[tuple[int, int]]:
        conn = self._conn
        if conn is None:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is closed")
        if self._running:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is in use by a call of run()")
        if len(statements) != len(params):
            raise ValueError(f"{len(statements)} statements but {len(params)} parameter sequences")
        self._running = True
        try:
            # 1. the whole batch is checked before anything runs
            if begin is not None:
                begin = _check_sql(-1, begin)
            batch = [(_check_sql(index, sql), _check_params(index, values))
                     for index, (sql, values) in enumerate(zip(statements, params, strict=True))]
            # 2. BEGIN, the statements in order, COMMIT
            return _run_batch(conn, begin, batch, commit)
        finally:
            self._running = False


def _run_batch(conn: sqlite3.Connection, begin: str | None, batch: list[tuple[str, tuple[Any, ...]]],
               commit: bool) -> list[tuple[int, int]]:
    began = False
    index = -1  # what runs: -1 begin, i statements[i], len(batch) the COMMIT
    try:
        if begin is not None:
            _drain(conn.execute(begin))
            began = conn.in_transaction
        results: list[tuple[int, int]] = []
        for sql, values in batch:
            index += 1
            cur = conn.execute(sql, values)
            _drain(cur)
            lastrowid, changes = cur.lastrowid, cur.rowcount
            if changes < 0 or lastrowid is None:  # not DML (the module counts no changes), or an empty
                lastrowid, changes = conn.execute("SELECT last_insert_rowid(), changes()").fetchone()
            results.append((lastrowid, changes))
        index = len(batch)
        if commit:
            conn.execute("COMMIT")
        return results
    except BaseException as exc:  # whatever it is, the transaction the call began does not stay open
        _rollback(conn, began)
        if isinstance(exc, sqlite3.Error):
            raise BatchError(index, _code_of(exc), str(exc)) from exc
        raise


def _rollback(conn: sqlite3.Connection, began: bool) -> None:
    if began and conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
