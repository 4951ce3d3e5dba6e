# cython: language_level=3
"""Compiled twin of ``_fastcore._sqlbatch_py``: a batch of SQLite statements in one transaction,
run with the GIL released.

The contract is the pure twin's (see its docstring).  How this one works: with the GIL held, every
statement is prepared (or taken from the connection's statement cache) and every parameter is read
into a C array (``str`` as its cached UTF-8 buffer, ``bytes`` as its buffer: the caller's sequences
keep those objects alive for the whole call); then, without the GIL, ``BEGIN``, each statement's
bind / step / reset and the ``COMMIT`` (with its fsync) run back to back against SQLite's C API;
then, with the GIL again, the results are built or :class:`BatchError` is raised.  A writer thread
therefore takes the GIL twice per transaction, however many statements it holds, instead of
several times per statement.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy

from _fastcore._sqlbatch_py import BatchError

ctypedef long long sqlite3_int64

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    int SQLITE_OK
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

DEF _ERRMSG_LEN = 512
cdef enum:
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

_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: prepared statements kept per connection (by SQL text); past this the cache is emptied and refilled
_CACHE_MAX = 256


cdef class _Stmt:
    cdef sqlite3_stmt *ptr
    cdef int nparams

    def __dealloc__(self):
        if self.ptr is not NULL:
            sqlite3_finalize(self.ptr)
            self.ptr = NULL


cdef class BatchConnection:
    """One SQLite connection that runs whole transactions in one call, without the GIL."""

    cdef sqlite3 *db
    cdef readonly str path
    cdef dict _cache

    def __cinit__(self):
        self.db = NULL
        self._cache = {}

    def __init__(self, str path, *, str synchronous="FULL", int busy_timeout_ms=30000, bint foreign_keys=True,
                 pragmas=()):
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        self.path = path
        cdef bytes bpath = path.encode("utf-8")
        cdef int rc = sqlite3_open_v2(bpath, &self.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                      NULL)
        if rc != SQLITE_OK:
            message = sqlite3_errmsg(self.db).decode("utf-8", "replace") if self.db is not NULL else "out of memory"
            self._close()
            raise BatchError(-1, rc & 0xFF, f"cannot open {path}: {message}")
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

    cdef void _close(self):
        self._cache = {}  # finalizes the statements (close_v2 would also wait for them)
        if self.db is not NULL:
            sqlite3_close_v2(self.db)
            self.db = NULL

    cdef _exec(self, str sql):
        cdef bytes b = sql.encode("utf-8")
        cdef int rc = sqlite3_exec(self.db, b, NULL, NULL, NULL)
        if rc != SQLITE_OK:
            raise BatchError(-1, rc & 0xFF, sqlite3_errmsg(self.db).decode("utf-8", "replace"))

    @property
    def closed(self):
        return self.db is NULL

    def close(self):
        self._close()

    cdef _Stmt _prepare(self, str sql, Py_ssize_t index):
        cdef _Stmt st = self._cache.get(sql)
        cdef Py_ssize_t n
        cdef const char *text
        cdef const char *tail = NULL
        cdef int rc
        if st is not None:
            return st
        text = PyUnicode_AsUTF8AndSize(sql, &n)
        st = _Stmt()
        rc = sqlite3_prepare_v2(self.db, text, <int>n + 1, &st.ptr, &tail)
        if rc != SQLITE_OK:
            raise BatchError(index, rc & 0xFF, sqlite3_errmsg(self.db).decode("utf-8", "replace"))
        if st.ptr is NULL:  # only white space or a comment
            raise BatchError(index, SQLITE_MISUSE, "statement is empty")
        if tail is not NULL and tail[0] != 0:
            rest = (<bytes>tail).strip()
            if rest and rest != b";":
                raise BatchError(index, SQLITE_MISUSE, "you can only execute one statement at a time")
        st.nparams = sqlite3_bind_parameter_count(st.ptr)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[sql] = st
        return st

    def run(self, statements, params, *, begin="BEGIN IMMEDIATE", bint commit=True):
        if self.db is NULL:
            raise BatchError(-1, SQLITE_MISUSE, "the connection is closed")
        cdef Py_ssize_t count = len(statements)
        if count != len(params):
            raise ValueError(f"{count} statements but {len(params)} parameter sequences")
        cdef bytes bbegin = None if begin is None else (<str>begin).encode("utf-8")
        cdef const char *cbegin = NULL if bbegin is None else PyBytes_AS_STRING(bbegin)
        cdef list stmts = []      # keeps each _Stmt alive for the call
        cdef list values_of = []  # keeps each parameter sequence (and its str / bytes) alive
        cdef Py_ssize_t total = 0, i, j, n, pos
        cdef _Stmt st
        cdef sqlite3_stmt **ptrs = NULL
        cdef int *nparams = NULL
        cdef Value *vals = NULL
        cdef Value *v
        cdef sqlite3_int64 *rowids = NULL
        cdef int *changes = NULL
        cdef int failed = -2, code = 0
        cdef char errmsg[_ERRMSG_LEN]
        errmsg[0] = 0
        for i in range(count):
            sql = statements[i]
            if type(sql) is not str:
                raise BatchError(i, SQLITE_MISUSE, f"statement must be str, not {type(sql).__name__}")
            seq = params[i]
            if type(seq) is not tuple:
                seq = tuple(seq)
            st = self._prepare(<str>sql, i)
            if len(seq) != st.nparams:
                raise BatchError(i, SQLITE_RANGE, f"Incorrect number of bindings supplied. The current "
                                                  f"statement uses {st.nparams}, and there are {len(seq)} supplied.")
            stmts.append(st)
            values_of.append(seq)
            total += st.nparams
        try:
            ptrs = <sqlite3_stmt **>PyMem_Malloc((count + 1) * sizeof(sqlite3_stmt *))
            nparams = <int *>PyMem_Malloc((count + 1) * sizeof(int))
            vals = <Value *>PyMem_Malloc((total + 1) * sizeof(Value))
            rowids = <sqlite3_int64 *>PyMem_Malloc((count + 1) * sizeof(sqlite3_int64))
            changes = <int *>PyMem_Malloc((count + 1) * sizeof(int))
            if ptrs is NULL or nparams is NULL or vals is NULL or rowids is NULL or changes is NULL:
                raise MemoryError()
            j = 0
            for i in range(count):
                st = <_Stmt>stmts[i]
                ptrs[i] = st.ptr
                nparams[i] = st.nparams
                seq = values_of[i]
                for pos in range(st.nparams):
                    value = (<tuple>seq)[pos]
                    v = &vals[j]
                    j += 1
                    if value is None:
                        v.kind = K_NULL
                    elif isinstance(value, int):  # bool included, as in the sqlite3 module
                        try:
                            v.i = value
                        except OverflowError as exc:
                            raise BatchError(i, SQLITE_MISMATCH, f"parameter {pos + 1}: {exc}") from None
                        v.kind = K_INT
                    elif isinstance(value, float):
                        v.kind = K_FLOAT
                        v.d = value
                    elif isinstance(value, str):
                        v.kind = K_TEXT
                        v.p = PyUnicode_AsUTF8AndSize(value, &n)
                        v.n = n
                    elif isinstance(value, bytes):
                        v.kind = K_BLOB
                        v.p = PyBytes_AS_STRING(value)
                        v.n = PyBytes_GET_SIZE(value)
                    else:
                        raise BatchError(i, SQLITE_MISMATCH,
                                         f"parameter {pos + 1}: type {type(value).__name__!r} is not supported")
                    if (v.kind == K_TEXT or v.kind == K_BLOB) and v.n > 0x7FFFFFFF:
                        raise BatchError(i, SQLITE_MISMATCH, f"parameter {pos + 1} is too large")
            with nogil:
                failed = _run_batch(self.db, cbegin, count, ptrs, nparams, vals, rowids, changes, commit,
                                    &code, errmsg)
            if failed != -2:
                raise BatchError(failed, code & 0xFF, errmsg.decode("utf-8", "replace"))
            return [(rowids[i], changes[i]) for i in range(count)]
        finally:
            PyMem_Free(ptrs)
            PyMem_Free(nparams)
            PyMem_Free(vals)
            PyMem_Free(rowids)
            PyMem_Free(changes)


cdef void _fail(sqlite3 *db, int rc, int *code, char *errmsg, bint began) noexcept nogil:
    """Copy the error of ``rc`` (the connection's message, or SQLite's text for the code) into
    ``code`` / ``errmsg``, then roll back the transaction the batch began."""
    cdef const char *msg = sqlite3_errmsg(db)
    cdef size_t mlen = 0
    code[0] = sqlite3_extended_errcode(db)
    if (code[0] & 0xFF) != (rc & 0xFF):  # the connection's last error is not this one
        code[0] = rc
        msg = sqlite3_errstr(rc)
    while msg[mlen] != 0 and mlen < _ERRMSG_LEN - 1:
        mlen += 1
    memcpy(errmsg, msg, mlen)
    errmsg[mlen] = 0
    if began and sqlite3_get_autocommit(db) == 0:
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL)


cdef int _run_batch(sqlite3 *db, const char *begin, Py_ssize_t count, sqlite3_stmt **ptrs, int *nparams,
                    Value *vals, sqlite3_int64 *rowids, int *changes, bint commit, int *code,
                    char *errmsg) noexcept nogil:
    """BEGIN, every statement, COMMIT.  Returns -2, or the index of what failed (-1 the BEGIN,
    ``count`` the COMMIT) with its error in ``code`` / ``errmsg`` and the transaction rolled back.
    Each statement is reset and its bindings cleared whatever happens."""
    cdef int rc, k
    cdef bint began = False
    cdef Py_ssize_t i, j = 0
    cdef sqlite3_stmt *stmt
    cdef Value *v
    if begin is not NULL:
        rc = sqlite3_exec(db, begin, NULL, NULL, NULL)
        if rc != SQLITE_OK:
            _fail(db, rc, code, errmsg, False)
            return -1
        began = sqlite3_get_autocommit(db) == 0
    for i in range(count):
        stmt = ptrs[i]
        rc = SQLITE_OK
        for k in range(nparams[i]):
            v = &vals[j]
            j += 1
            if rc != SQLITE_OK:
                continue
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
        if rc == SQLITE_OK:
            rc = sqlite3_step(stmt)
            while rc == SQLITE_ROW:
                rc = sqlite3_step(stmt)
        if rc != SQLITE_DONE and rc != SQLITE_OK:
            _fail(db, rc, code, errmsg, began)  # (before the reset: the message is the step's)
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
            return <int>i
        rowids[i] = sqlite3_last_insert_rowid(db)
        changes[i] = sqlite3_changes(db)
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
    if commit:
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL)
        if rc != SQLITE_OK:
            _fail(db, rc, code, errmsg, began)
            return <int>count
    return -2
