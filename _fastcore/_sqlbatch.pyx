# cython: language_level=3
"""Compiled twin of ``_fastcore._sqlbatch_py``: a batch of SQLite statements in one transaction,
run with the GIL released.

The contract is the pure twin's (see its docstring).  How this one works, in three phases:

1. With the GIL: the whole batch is checked (the contract's argument checks, in statement order) and
   read into C arrays: each statement's UTF-8 text (the ``str``'s own buffer) and its prepared
   statement when the connection's statement cache has it (NULL when not: it is prepared in phase 2),
   and every parameter (``str`` as its cached UTF-8 buffer, ``bytes`` as its buffer, bound with
   ``SQLITE_STATIC``: the call keeps those objects, and the tuples holding them, alive throughout).
2. Without the GIL and without any Python API call: ``begin``, then for each statement in turn:
   prepare it if it was not cached (``sqlite3_prepare_v2`` needs no GIL; preparing only now is what
   lets a statement use a table an earlier one created, and makes errors come in statement order),
   the ``sqlite3`` module's checks (one statement at a time, the number of parameters), bind, step
   through every row, reset; then the ``COMMIT`` (with its fsync).  A failure rolls back what the call
   began and stops there.
3. With the GIL again: the statements prepared in phase 2 join the cache, then the results are built
   or :class:`BatchError` is raised.

A writer thread therefore takes the GIL twice per transaction, however many statements it holds,
instead of several times per statement.

Ownership: the C arrays are PyMem buffers, freed on every path.  A text new to the cache that appears
several times in a batch is prepared once, at its first use.  A statement prepared in phase 2 belongs
to the call until the cache adopts it in phase 3 (a ``_Stmt``, which finalizes it), and is finalized by
the call otherwise; one refused after preparing (more than one statement in its text) is finalized at
once and never cached.  ``run`` and ``close`` are refused while a ``run`` is in progress: phase 1 can
run Python code (a parameter sequence's ``__getitem__``) and phase 2 uses the connection without the GIL.
"""

import os
from collections.abc import Sequence

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_FromObject
from libc.stdio cimport snprintf
from libc.string cimport memset, strlen

# the pure twin's error type and argument rules, so the two twins cannot drift apart on them
from _fastcore._sqlbatch_py import _NOT_PARAMETER_SEQUENCES, BatchError, _options

ctypedef long long sqlite3_int64

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    int SQLITE_OK
    int SQLITE_ERROR
    int SQLITE_TOOBIG
    int SQLITE_ROW
    int SQLITE_DONE
    int SQLITE_MISUSE
    int SQLITE_RANGE
    int SQLITE_MISMATCH
    int SQLITE_OPEN_READWRITE
    int SQLITE_OPEN_CREATE
    int SQLITE_OPEN_NOMUTEX
    int sqlite3_open_v2(const char *filename, sqlite3 **ppDb, int flags, const char *zVfs)
    int sqlite3_close_v2(sqlite3 *db)
    int sqlite3_exec(sqlite3 *db, const char *sql, void *callback, void *arg, char **errmsg)
    int sqlite3_busy_timeout(sqlite3 *db, int ms)
    int sqlite3_extended_errcode(sqlite3 *db)
    const char *sqlite3_errmsg(sqlite3 *db)
    const char *sqlite3_errstr(int rc)
    int sqlite3_get_autocommit(sqlite3 *db)
    sqlite3_int64 sqlite3_last_insert_rowid(sqlite3 *db)
    int sqlite3_changes(sqlite3 *db)
    int sqlite3_prepare_v2(sqlite3 *db, const char *zSql, int nByte, sqlite3_stmt **ppStmt, const char **pzTail)
    int sqlite3_finalize(sqlite3_stmt *pStmt)
    int sqlite3_reset(sqlite3_stmt *pStmt)
    int sqlite3_clear_bindings(sqlite3_stmt *pStmt)
    int sqlite3_step(sqlite3_stmt *pStmt)
    int sqlite3_bind_parameter_count(sqlite3_stmt *pStmt)
    int sqlite3_bind_null(sqlite3_stmt *pStmt, int i)
    int sqlite3_bind_int64(sqlite3_stmt *pStmt, int i, sqlite3_int64 value)
    int sqlite3_bind_double(sqlite3_stmt *pStmt, int i, double value)
    int sqlite3_bind_text(sqlite3_stmt *pStmt, int i, const char *value, int n, void *destructor)
    int sqlite3_bind_blob(sqlite3_stmt *pStmt, int i, const void *value, int n, void *destructor)

cdef enum:
    ERRMSG_LEN = 512
    MAX_LEN = 0x7FFFFFFF  # INT_MAX: SQLite takes lengths as C int
    K_NULL = 0
    K_INT = 1
    K_FLOAT = 2
    K_TEXT = 3
    K_BLOB = 4

cdef struct Value:
    int kind
    sqlite3_int64 i
    double d
    const char *p
    Py_ssize_t n

cdef struct Item:
    # one statement of a batch
    const char *sql       # its UTF-8 text, NUL-terminated (the str's own buffer; the call keeps the str)
    int nsql              # its length in bytes
    Py_ssize_t slot       # the item whose ``stmt`` it runs: itself, or the first item of the batch with the
                          # same text when that text is not cached (prepared once, at its first use)
    sqlite3_stmt *stmt    # (for slot == its own index) the statement: from the cache, or prepared in phase 2
    bint fresh            # ``stmt`` was prepared by this call and is owned by it until the cache adopts it
    Py_ssize_t first      # its parameters: vals[first:first + nvals]
    Py_ssize_t nvals
    sqlite3_int64 rowid   # results: sqlite3_last_insert_rowid() / sqlite3_changes() after it
    int changes

#: prepared statements kept per connection (by SQL text); past this the cache is emptied and refilled
_CACHE_MAX = 256
cdef const char *_ONE_AT_A_TIME = "You can only execute one statement at a time."


cdef class _Stmt:
    """Owns one prepared statement of the cache (finalized with it)."""
    cdef sqlite3_stmt *ptr

    def __dealloc__(self):
        if self.ptr is not NULL:
            sqlite3_finalize(self.ptr)
            self.ptr = NULL


# ---------------------------------------------------------------------------------------- phase 1 (GIL)

cdef str _check_sql(Py_ssize_t index, object sql):
    """``sql`` as an exact ``str`` whose UTF-8 text can be prepared, else BatchError (the contract's
    checks, in the pure twin's order)."""
    cdef Py_ssize_t n
    cdef const char *text
    if type(sql) is not str:
        if not isinstance(sql, str):
            raise BatchError(index, SQLITE_MISUSE, f"statement must be str, not {type(sql).__name__}")
        sql = PyUnicode_FromObject(sql)  # a subclass: its text as an exact str (the cache's key)
    try:
        text = PyUnicode_AsUTF8AndSize(sql, &n)
    except UnicodeEncodeError as exc:
        raise BatchError(index, SQLITE_MISUSE, str(exc)) from None
    if <Py_ssize_t>strlen(text) != n:
        raise BatchError(index, SQLITE_MISUSE, "the query contains a null character")
    if n >= MAX_LEN:
        raise BatchError(index, SQLITE_TOOBIG, "query string is too large")
    return <str>sql


cdef tuple _check_params(Py_ssize_t index, object values):
    """``values`` as a tuple (the call keeps it, and so every str / bytes bound from it), else BatchError."""
    if type(values) is tuple:
        return <tuple>values
    if type(values) is not list and (not isinstance(values, Sequence)
                                     or isinstance(values, _NOT_PARAMETER_SEQUENCES)):
        raise BatchError(index, SQLITE_MISUSE,
                         f"parameters must be a sequence such as a tuple or list, not {type(values).__name__}")
    return tuple(values)


cdef int _read_value(Py_ssize_t index, Py_ssize_t pos, object value, Value *v) except -1:
    """``value`` (parameter ``pos``, from 1) into ``v``, else BatchError (the pure twin's checks).  A
    subclass of a supported type is read as its base value (no ``__int__`` / ``__str__`` is called)."""
    cdef Py_ssize_t n
    if value is None:
        v.kind = K_NULL
    elif isinstance(value, int):  # bool included
        try:
            v.i = value
        except OverflowError:
            raise BatchError(index, SQLITE_MISMATCH,
                             f"parameter {pos}: Python int too large to convert to SQLite INTEGER") from None
        v.kind = K_INT
    elif isinstance(value, float):
        v.d = value
        v.kind = K_FLOAT
    elif isinstance(value, str):
        try:
            v.p = PyUnicode_AsUTF8AndSize(value, &n)
        except UnicodeEncodeError as exc:
            raise BatchError(index, SQLITE_MISMATCH, f"parameter {pos}: {exc}") from None
        if n > MAX_LEN:
            raise BatchError(index, SQLITE_TOOBIG, f"parameter {pos}: string longer than INT_MAX bytes")
        v.n = n
        v.kind = K_TEXT
    elif isinstance(value, bytes):
        v.p = PyBytes_AS_STRING(value)
        v.n = PyBytes_GET_SIZE(value)
        if v.n > MAX_LEN:
            raise BatchError(index, SQLITE_TOOBIG, f"parameter {pos}: BLOB longer than INT_MAX bytes")
        v.kind = K_BLOB
    else:
        raise BatchError(index, SQLITE_MISMATCH, f"parameter {pos}: type {type(value).__name__!r} is not supported")
    return 0


cdef class BatchConnection:
    """One SQLite connection that runs whole transactions in one call, without the GIL."""

    cdef sqlite3 *db
    cdef readonly str path
    cdef dict _cache
    cdef bint _running  # a run() is in progress: close() / run() from inside it (or another thread) refused

    def __cinit__(self):
        self.db = NULL
        self._cache = {}
        self._running = False

    def __init__(self, path, *, str synchronous="FULL", int busy_timeout_ms=30000, bint foreign_keys=True,
                 pragmas=()):
        mode = _options(synchronous, busy_timeout_ms)
        fspath = os.fspath(path)
        cdef bytes bpath = os.fsencode(fspath)  # as the sqlite3 module encodes a path
        if b"\x00" in bpath:
            raise ValueError("embedded null byte")
        self._close()  # (__init__ called again)
        self.path = os.fsdecode(fspath)
        cdef int rc = sqlite3_open_v2(bpath, &self.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                      NULL)
        if rc != SQLITE_OK:
            message = sqlite3_errmsg(self.db).decode("utf-8", "replace") if self.db is not NULL else "out of memory"
            self._close()
            raise BatchError(-1, rc & 0xFF, f"cannot open {self.path}: {message}")
        sqlite3_busy_timeout(self.db, busy_timeout_ms)
        try:
            self._exec(f"PRAGMA synchronous={mode}")
            self._exec(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            for pragma in pragmas:
                self._exec(f"PRAGMA {pragma}")
        except BaseException:
            self._close()
            raise

    def __dealloc__(self):
        self._close()

    cdef int _close(self) except -1:
        if self._running:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is in use by a call of run()")
        self._cache = {}  # finalizes the statements (close_v2 would also wait for them)
        if self.db is not NULL:
            sqlite3_close_v2(self.db)
            self.db = NULL
        return 0

    cdef _exec(self, str sql):
        """One statement without parameters (a pragma), checked as a batch's statement; BatchError(-1)."""
        cdef Py_ssize_t n
        cdef const char *text
        cdef int code = 0
        cdef bint ok
        cdef char errmsg[ERRMSG_LEN]
        sql = _check_sql(-1, sql)
        text = PyUnicode_AsUTF8AndSize(sql, &n)
        with nogil:
            ok = _exec_one(self.db, text, <int>n, &code, errmsg)
        if not ok:
            raise BatchError(-1, code & 0xFF, errmsg.decode("utf-8", "replace"))

    @property
    def closed(self):
        return self.db is NULL

    def close(self):
        self._close()

    def run(self, statements, params, *, begin="BEGIN IMMEDIATE", bint commit=True):
        if self.db is NULL:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is closed")
        if self._running:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is in use by a call of run()")
        cdef Py_ssize_t count = len(statements)
        if count != len(params):
            raise ValueError(f"{count} statements but {len(params)} parameter sequences")
        self._running = True
        try:
            return self._run(statements, params, begin, commit, count)
        finally:
            self._running = False

    cdef list _run(self, statements, params, begin, bint commit, Py_ssize_t count):
        cdef list texts = []  # each statement's text (exact str): keeps its UTF-8 buffer; the cache's keys
        cdef list alive = []  # the parameter tuples (and their str / bytes) and the cached _Stmt in use
        cdef dict first_use = {}  # text -> index of its first item, for the texts not in the cache
        cdef str sql
        cdef tuple values
        cdef _Stmt st
        cdef Item *items = NULL
        cdef Item *it
        cdef Value *vals = NULL
        cdef Value *grown
        cdef Py_ssize_t nvals = 0, capacity = 0, i, pos, n
        cdef const char *cbegin = NULL
        cdef Py_ssize_t nbegin = 0
        cdef Py_ssize_t failed = -2
        cdef int code = 0
        cdef char errmsg[ERRMSG_LEN]
        errmsg[0] = 0
        try:
            # ---- phase 1: check the whole batch and read it into items / vals
            if begin is not None:
                begin = _check_sql(-1, begin)
                cbegin = PyUnicode_AsUTF8AndSize(begin, &nbegin)
            items = <Item *>PyMem_Malloc((count + 1) * sizeof(Item))
            if items is NULL:
                raise MemoryError()
            memset(items, 0, (count + 1) * sizeof(Item))  # (the finally walks them whatever happens)
            for i in range(count):
                it = &items[i]
                sql = _check_sql(i, statements[i])
                texts.append(sql)
                it.sql = PyUnicode_AsUTF8AndSize(sql, &n)
                it.nsql = <int>n
                it.slot = i
                st = self._cache.get(sql)
                if st is not None:
                    alive.append(st)
                    it.stmt = st.ptr
                else:
                    it.slot = first_use.setdefault(sql, i)
                values = _check_params(i, params[i])
                alive.append(values)
                it.first = nvals
                it.nvals = len(values)
                if nvals + it.nvals > capacity:
                    capacity = max(2 * capacity, nvals + it.nvals, 16)
                    grown = <Value *>PyMem_Realloc(vals, capacity * sizeof(Value))
                    if grown is NULL:
                        raise MemoryError()
                    vals = grown
                for pos in range(it.nvals):
                    _read_value(i, pos + 1, values[pos], &vals[nvals])
                    nvals += 1
            # ---- phase 2: begin, the statements, COMMIT
            with nogil:
                failed = _run_batch(self.db, cbegin, <int>nbegin, items, count, vals, commit, &code, errmsg)
            # ---- phase 3: the statements prepared in phase 2 join the cache, then the outcome
            for i in range(count):
                if items[i].fresh:
                    st = _Stmt.__new__(_Stmt)
                    st.ptr = items[i].stmt  # st owns it from here
                    items[i].fresh = False
                    if len(self._cache) >= _CACHE_MAX:
                        self._cache.clear()
                    self._cache[texts[i]] = st
            if failed != -2:
                raise BatchError(failed, code & 0xFF, errmsg.decode("utf-8", "replace"))
            return [(items[i].rowid, items[i].changes) for i in range(count)]
        finally:
            if items is not NULL:
                for i in range(count):  # prepared but not adopted (an error in phase 3)
                    if items[i].fresh:
                        sqlite3_finalize(items[i].stmt)
            PyMem_Free(items)
            PyMem_Free(vals)


# ------------------------------------------------------------------------------------- phase 2 (no GIL)

cdef const char *_lstrip_sql(const char *sql) noexcept nogil:
    """The first character of ``sql`` that is not white space or in a comment, or NULL: the sqlite3
    module's ``lstrip_sql`` (CPython 3.11), which judges what may follow a statement."""
    cdef const char *pos = sql
    if pos is NULL:
        return NULL
    while pos[0] != 0:
        if pos[0] == c' ' or pos[0] == c'\t' or pos[0] == c'\f' or pos[0] == c'\n' or pos[0] == c'\r':
            pos += 1
        elif pos[0] == c'-' and pos[1] == c'-':  # -- to the end of the line
            pos += 2
            while pos[0] != 0 and pos[0] != c'\n':
                pos += 1
            if pos[0] == 0:
                return NULL
            pos += 1
        elif pos[0] == c'/' and pos[1] == c'*':  # /* to */ (an unterminated one runs to the end)
            pos += 2
            while pos[0] != 0 and (pos[0] != c'*' or pos[1] != c'/'):
                pos += 1
            if pos[0] == 0:
                return NULL
            pos += 2
        else:
            return pos
    return NULL


cdef void _set_message(int rc, const char *msg, int *code, char *errmsg) noexcept nogil:
    """``rc`` and a copy of ``msg`` (cut to ERRMSG_LEN - 1 bytes) into ``code`` / ``errmsg``."""
    cdef size_t mlen = 0
    code[0] = rc
    while msg[mlen] != 0 and mlen < ERRMSG_LEN - 1:
        errmsg[mlen] = msg[mlen]
        mlen += 1
    errmsg[mlen] = 0


cdef void _set_error(sqlite3 *db, int rc, int *code, char *errmsg) noexcept nogil:
    """The error of ``rc`` into ``code`` / ``errmsg``: the connection's message, or SQLite's text for
    the code when the connection's last error is another one."""
    cdef int extended = sqlite3_extended_errcode(db)
    if (extended & 0xFF) == (rc & 0xFF):
        _set_message(extended, sqlite3_errmsg(db), code, errmsg)
    else:
        _set_message(rc, sqlite3_errstr(rc), code, errmsg)


cdef void _set_range_error(int uses, Py_ssize_t supplied, int *code, char *errmsg) noexcept nogil:
    """The sqlite3 module's error for a wrong number of parameters."""
    code[0] = SQLITE_RANGE
    snprintf(errmsg, ERRMSG_LEN, "Incorrect number of bindings supplied. The current statement uses %d, "
             "and there are %lld supplied.", uses, <long long>supplied)


cdef void _rollback(sqlite3 *db, bint began) noexcept nogil:
    """Roll back the transaction the batch began (after its error was copied: this changes errmsg)."""
    if began and sqlite3_get_autocommit(db) == 0:
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL)


cdef int _prepare(sqlite3 *db, const char *sql, int nsql, sqlite3_stmt **stmt, int *code,
                  char *errmsg) noexcept nogil:
    """Prepare one statement as the sqlite3 module does: SQLite's error, or SQLITE_MISUSE when more
    than white space and comments follow it.  ``*stmt`` is then NULL; it is NULL too, with SQLITE_OK,
    for a text with no statement in it (only white space, comments, ``;``)."""
    cdef const char *tail = NULL
    cdef int rc = sqlite3_prepare_v2(db, sql, nsql + 1, stmt, &tail)  # (+ 1: the text is NUL-terminated)
    if rc != SQLITE_OK:
        stmt[0] = NULL
        _set_error(db, rc, code, errmsg)
        return rc
    if _lstrip_sql(tail) is not NULL:
        sqlite3_finalize(stmt[0])  # (never cached: its text would be run without this check)
        stmt[0] = NULL
        _set_message(SQLITE_MISUSE, _ONE_AT_A_TIME, code, errmsg)
        return SQLITE_MISUSE
    return SQLITE_OK


cdef int _step(sqlite3_stmt *stmt) noexcept nogil:
    """Step through every row: SQLITE_DONE or the error."""
    cdef int rc = sqlite3_step(stmt)
    while rc == SQLITE_ROW:
        rc = sqlite3_step(stmt)
    return rc


cdef bint _exec_one(sqlite3 *db, const char *sql, int nsql, int *code, char *errmsg) noexcept nogil:
    """Prepare, run and finalize one statement without parameters (``begin``, a pragma), checked as a
    batch's statement.  False with the error in ``code`` / ``errmsg``."""
    cdef sqlite3_stmt *stmt = NULL
    cdef int rc, uses
    if _prepare(db, sql, nsql, &stmt, code, errmsg) != SQLITE_OK:
        return False
    if stmt is NULL:  # nothing in it
        return True
    uses = sqlite3_bind_parameter_count(stmt)
    if uses != 0:
        sqlite3_finalize(stmt)
        _set_range_error(uses, 0, code, errmsg)
        return False
    rc = _step(stmt)
    if rc != SQLITE_DONE:
        _set_error(db, rc, code, errmsg)  # (before the finalize: the message is the step's)
    sqlite3_finalize(stmt)
    return rc == SQLITE_DONE


cdef Py_ssize_t _run_batch(sqlite3 *db, const char *begin, int nbegin, Item *items, Py_ssize_t count,
                           Value *vals, bint commit, int *code, char *errmsg) noexcept nogil:
    """``begin``, every statement, COMMIT.  Returns -2, or the index of what failed (-1 ``begin``,
    ``count`` the COMMIT) with its error in ``code`` / ``errmsg`` and the transaction the call began
    rolled back.  Each statement is reset and its bindings cleared whatever happens."""
    cdef int rc, k, uses
    cdef bint began = False
    cdef Py_ssize_t i
    cdef Item *it
    cdef Item *owner
    cdef sqlite3_stmt *stmt
    cdef Value *v
    if begin is not NULL:
        if not _exec_one(db, begin, nbegin, code, errmsg):
            return -1
        began = sqlite3_get_autocommit(db) == 0
    for i in range(count):
        it = &items[i]
        owner = &items[it.slot]
        if owner.stmt is NULL:  # not in the cache (or a text with no statement): prepared now, in its turn
            if _prepare(db, it.sql, it.nsql, &owner.stmt, code, errmsg) != SQLITE_OK:
                _rollback(db, began)
                return i
            owner.fresh = owner.stmt is not NULL
        stmt = owner.stmt
        uses = sqlite3_bind_parameter_count(stmt)  # (0 for NULL)
        if uses != it.nvals:
            _set_range_error(uses, it.nvals, code, errmsg)
            _rollback(db, began)
            return i
        if stmt is NULL:  # a no-op, which still reports
            it.rowid = sqlite3_last_insert_rowid(db)
            it.changes = sqlite3_changes(db)
            continue
        rc = SQLITE_OK
        for k in range(uses):
            v = &vals[it.first + k]
            if v.kind == K_NULL:
                rc = sqlite3_bind_null(stmt, k + 1)
            elif v.kind == K_INT:
                rc = sqlite3_bind_int64(stmt, k + 1, v.i)
            elif v.kind == K_FLOAT:
                rc = sqlite3_bind_double(stmt, k + 1, v.d)
            elif v.kind == K_TEXT:
                rc = sqlite3_bind_text(stmt, k + 1, v.p, <int>v.n, NULL)  # NULL = SQLITE_STATIC
            else:
                rc = sqlite3_bind_blob(stmt, k + 1, v.p, <int>v.n, NULL)
            if rc != SQLITE_OK:
                break
        if rc == SQLITE_OK:
            rc = _step(stmt)
        if rc != SQLITE_DONE:
            _set_error(db, rc, code, errmsg)  # (before the reset and the rollback: the message is the step's)
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
            _rollback(db, began)
            return i
        it.rowid = sqlite3_last_insert_rowid(db)
        it.changes = sqlite3_changes(db)
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
    if commit:
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL)
        if rc != SQLITE_OK:
            _set_error(db, rc, code, errmsg)
            _rollback(db, began)
            return count
    return -2
