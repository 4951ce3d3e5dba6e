"""_fastcore.sqlbatch over both twins: one transaction of parameterised statements per call.

Known results (types round-tripped, (lastrowid, changes) per statement), a differential test against
the plain ``sqlite3`` module (hypothesis batches of INSERT / UPDATE / DELETE / SELECT / empty statements
with at most one failing statement; the reference applies the contract's up-front argument checks), the
error paths (BEGIN, COMMIT, busy, closed, malformed calls), the contract's rules (arguments checked for
the whole batch before anything runs, SQLite's errors in statement order, statement text judged as the
``sqlite3`` module does, the pure twin's rollback on any exception, paths and pragmas of the
constructor), transactions left to the caller, the compiled twin's statement cache (reuse, eviction
past 256, schema changes), rows stepped and dropped, and that the compiled twin runs a batch without the
GIL.  ``test_twins_agree_*`` compares the two twins directly, ``test_agreed_outcome`` pins the outcome
of the edge cases where they once differed (``AGREED``).
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import pathlib
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from conftest import TWINS, load_twin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fastcore import sqlbatch as selector

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
SQLITE_ERROR, SQLITE_BUSY, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_MISUSE, SQLITE_RANGE = 1, 5, 19, 20, 21, 25


@pytest.fixture(scope="session", params=TWINS)
def sqlbatch_impl(request: pytest.FixtureRequest) -> ModuleType:
    return load_twin(request, "sqlbatch", request.param)


@pytest.fixture
def both_twins(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    """(pure, compiled) for the tests that compare the twins with each other (c_extension only)."""
    return load_twin(request, "sqlbatch", "py"), load_twin(request, "sqlbatch", "c")


_db_names = itertools.count()


def make_db(directory: pathlib.Path, schema: str) -> str:
    """A fresh WAL database under ``directory`` with ``schema`` applied; returns its path as str."""
    path = str(directory / f"db{next(_db_names)}.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        conn.executescript(schema)
    finally:
        conn.close()
    return path


def read(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_selector_exports_the_twin_api() -> None:
    assert selector.IMPLEMENTATION in ("c", "py")
    for name in selector.__all__:
        assert hasattr(selector, name), name


# --------------------------------------------------------------------------- 1. known results

KNOWN_SCHEMA = """
CREATE TABLE merchant(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE txn(
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    amount INTEGER,
    rate REAL,
    payload BLOB,
    state TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'done')),
    merchant_id INTEGER REFERENCES merchant(id)
);
"""
INSERT_TXN = "INSERT INTO txn(label, amount, rate, payload, merchant_id) VALUES (?, ?, ?, ?, ?)"
BIG_TEXT = "支付成功 ok\n" * (1 << 17)  # 1 Mi characters, 2.5 MiB of UTF-8


def test_known_results_and_values_round_trip(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, KNOWN_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    assert not conn.closed and conn.path == path
    # before any insert on this connection, last_insert_rowid() is 0
    assert conn.run(["UPDATE txn SET rate = 1 WHERE id < 0"], [()]) == [(0, 0)]
    statements = [
        "INSERT INTO merchant(id, name) VALUES (?, ?)",
        INSERT_TXN,
        INSERT_TXN,
        INSERT_TXN,
        INSERT_TXN,
        INSERT_TXN,
        "INSERT INTO txn(id, label) VALUES (?, ?)",
        "UPDATE txn SET state = 'done' WHERE amount < ?",
        "UPDATE txn SET rate = rate * 2 WHERE id = ?",
        "DELETE FROM txn WHERE id = ?",
        "UPDATE txn SET amount = ? WHERE id = ?",
    ]
    params: list[tuple[Any, ...]] = [
        (7, "支付成功商户"),
        ("支付成功", -5, 1e308, b"\x00\x01\x00\xff", 7),
        ("", INT64_MAX, -1.5, -0.0, None),
        ("a\x00b", INT64_MIN, None, b"", 7),
        (BIG_TEXT, True, 5e-324, 1.0, None),
        ("false", False, -0.0, "\x00", 7),
        (1000, "explicit"),
        (0,),
        (999,),
        (1000,),
        (1 << 40, 3),
    ]
    result = conn.run(statements, params)
    assert result == [
        (7, 1),  # INSERT merchant: explicit rowid 7
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (1000, 1),
        (1000, 2),  # UPDATE: lastrowid unchanged, two rows with amount < 0
        (1000, 0),
        (1000, 1),
        (1000, 1),
    ]
    rows = read(path, "SELECT id, label, amount, rate, payload, state, merchant_id FROM txn ORDER BY id")
    assert rows == [
        (1, "支付成功", -5, 1e308, b"\x00\x01\x00\xff", "done", 7),
        (2, "", INT64_MAX, -1.5, -0.0, "new", None),
        (3, "a\x00b", 1 << 40, None, b"", "done", 7),
        (4, BIG_TEXT, 1, 5e-324, 1.0, "new", None),
        (5, "false", 0, 0.0, "\x00", "new", 7),
    ]
    types = read(path, "SELECT typeof(amount), typeof(rate), typeof(payload) FROM txn ORDER BY id")
    assert types == [
        ("integer", "real", "blob"),
        ("integer", "real", "real"),
        ("integer", "null", "blob"),  # b"" stays an empty blob, not NULL
        ("integer", "real", "real"),
        ("integer", "real", "text"),
    ]
    payload_zero = rows[1][4]
    assert math.copysign(1.0, payload_zero) == -1.0  # -0.0 kept (BLOB affinity stores the REAL as is)
    assert type(rows[3][2]) is int and rows[3][2] == 1 and rows[4][2] == 0  # bool -> 1 / 0
    assert read(path, "SELECT length(CAST(label AS BLOB)) FROM txn WHERE id = 3") == [(3,)]  # NUL kept
    assert read(path, "SELECT id, name FROM merchant") == [(7, "支付成功商户")]
    conn.close()
    assert conn.closed


def test_rows_are_stepped_through_and_dropped(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, KNOWN_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    counted = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) "
               "SELECT x, x * x FROM c")
    result = conn.run(
        [INSERT_TXN, INSERT_TXN, "SELECT * FROM txn", "PRAGMA table_info(txn)", counted,
         "INSERT INTO txn(label) VALUES (?), (?) RETURNING id, label", "PRAGMA user_version = 42",
         "SELECT count(*) FROM txn WHERE label = ?"],
        [("a", 1, 1.0, b"x", None), ("b", 2, 2.0, b"y", None), (), (), (), ("c", "d"), (), ("a",)],
    )
    # a statement that changes nothing reports what SQLite does: the last DML statement's count
    assert result == [(1, 1), (2, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 2), (4, 2)]
    assert read(path, "SELECT label FROM txn ORDER BY id") == [("a",), ("b",), ("c",), ("d",)]
    assert read(path, "PRAGMA user_version") == [(42,)]
    # every row is stepped: an error on the 5th row of a SELECT fails the batch
    fails_late = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) "
                  "SELECT CASE WHEN x = 5 THEN abs(-9223372036854775808) ELSE x END FROM c")
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_TXN, fails_late], [("e", 0, 0.0, None, None), ()])
    assert (info.value.index, info.value.code) == (1, SQLITE_ERROR)
    assert "integer overflow" in info.value.message
    assert read(path, "SELECT count(*) FROM txn") == [(4,)]
    conn.close()


# --------------------------------------------------------------------------- 2. differential vs sqlite3

DIFF_SCHEMA = """
PRAGMA foreign_keys = ON;
CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO parent(id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');
CREATE TABLE t(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    n INTEGER,
    x REAL,
    b BLOB,
    v,
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'void')),
    pid INTEGER REFERENCES parent(id)
);
"""

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, -1, INT64_MIN, INT64_MAX, -0.0, 1e308, float("inf"), float("nan")]),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
ids = st.integers(1, 12)
pids = st.sampled_from([None, 1, 2, 3])

good_statements = st.one_of(
    st.tuples(st.just("INSERT INTO t(name, n, x, b, v, pid) VALUES (?, ?, ?, ?, ?, ?)"),
              st.tuples(st.text(max_size=12), values, values, values, values, pids)),
    st.tuples(st.just("INSERT OR REPLACE INTO t(id, name, v) VALUES (?, ?, ?)"),
              st.tuples(ids, st.text(max_size=8), values)),
    st.tuples(st.just("UPDATE t SET n = ?, v = ? WHERE id = ?"), st.tuples(values, values, ids)),
    st.tuples(st.just("UPDATE t SET status = ? WHERE id % ? = 0"),
              st.tuples(st.sampled_from(["ok", "void"]), st.integers(1, 4))),
    st.tuples(st.just("DELETE FROM t WHERE id = ?"), st.tuples(ids)),
    st.tuples(st.just("DELETE FROM t WHERE n < ?"), st.tuples(values)),
    st.tuples(st.just("SELECT count(*), max(id) FROM t WHERE v = ?"), st.tuples(values)),
    st.tuples(st.just("INSERT INTO t(name, x) VALUES (?, ?) RETURNING id, x"),
              st.tuples(st.text(max_size=4), values)),
    # no statement in the text: a no-op that reports (last_insert_rowid, changes)
    st.tuples(st.sampled_from(["", "  -- nothing", "/* c */ ;", ";"]), st.just(())),
    st.tuples(st.just("SELECT count(*) FROM t; -- trailing comment"), st.just(())),
)

#: (statement, params, SQLite result code the twins must report); each always fails
bad_statements = st.one_of(
    st.tuples(st.just("INSERT INTO t(name, n) VALUES (?, ?)"), st.tuples(st.none(), values),
              st.just(SQLITE_CONSTRAINT)),  # NOT NULL
    st.tuples(st.just("INSERT INTO t(name, status) VALUES (?, ?)"),
              st.tuples(st.text(max_size=4), st.sampled_from(["bad", "", "OK"])),
              st.just(SQLITE_CONSTRAINT)),  # CHECK
    st.tuples(st.just("INSERT INTO t(name, pid) VALUES (?, ?)"),
              st.tuples(st.text(max_size=4), st.sampled_from([0, 4, 99, -1])),
              st.just(SQLITE_CONSTRAINT)),  # FOREIGN KEY
    st.tuples(st.just("INSERT INTO missing(a) VALUES (?)"), st.tuples(values), st.just(SQLITE_ERROR)),
    st.tuples(st.just("UPDATE t SET n = ? WHERE id = ?"),
              st.one_of(st.tuples(values), st.tuples(values, ids, values)), st.just(SQLITE_RANGE)),
    st.tuples(st.just("UPDATE t SET v = ? WHERE id = ?"),
              st.tuples(st.sampled_from([[1], {"a": 1}, Decimal("1.5"), bytearray(b"x"), memoryview(b"m"), 1j, (1,),
                                         "x\ud800"]), ids),
              st.just(SQLITE_MISMATCH)),
    st.tuples(st.just("DELETE FROM t WHERE id = ?"), st.sampled_from([None, 1, {"id": 1}, "1", b"1"]),
              st.just(SQLITE_MISUSE)),  # params not a sequence (or one that is a value)
    st.tuples(st.sampled_from(["INSERT INTO t(name) VALUES ('a'); SELECT 1", "DELETE FROM t;;",
                               "SELECT 1\x00 -- NUL"]), st.just(()), st.just(SQLITE_MISUSE)),
    st.tuples(st.just("INSERT INTO t(name, n) VALUES (?, ?)"),
              st.tuples(st.text(max_size=4),
                        st.one_of(st.integers(INT64_MAX + 1, 1 << 80), st.integers(-(1 << 80), INT64_MIN - 1))),
              st.just(SQLITE_MISMATCH)),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[str], list[tuple[Any, ...]], int | None, int | None]:
    """(statements, params, index of the failing statement or None, its expected code)."""
    body = draw(st.lists(good_statements, max_size=8))
    statements = [sql for sql, _ in body]
    params = [p for _, p in body]
    if draw(st.integers(0, 3)) == 0:
        sql, p, code = draw(bad_statements)
        at = draw(st.integers(0, len(body)))
        statements.insert(at, sql)
        params.insert(at, p)
        return statements, params, at, code
    return statements, params, None, None


#: the parameter types of the contract
SUPPORTED = (type(None), int, float, str, bytes)


def refused_before_running(statements: list[str], params: list[Any]) -> int | None:
    """The contract's argument checks (rule: nothing runs when one fails): the index of the first
    statement they refuse, or None.  The sqlite3 module itself would run the statements before it."""
    for index, (sql, p) in enumerate(zip(statements, params, strict=True)):
        if "\x00" in sql or not isinstance(p, tuple | list):
            return index
        for value in p:
            if not isinstance(value, SUPPORTED):  # the module also takes bytearray and memoryview
                return index
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                return index
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return index
    return None


def reference_connection(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def reference_run(conn: sqlite3.Connection, statements: list[str],
                  params: list[tuple[Any, ...]]) -> tuple[str, Any]:
    """The batch through the sqlite3 module: ("ok", results) or ("error", index)."""
    refused = refused_before_running(statements, params)
    if refused is not None:
        return "error", refused
    conn.execute("BEGIN IMMEDIATE")
    results = []
    for index, (sql, p) in enumerate(zip(statements, params, strict=True)):
        try:
            conn.execute(sql, p).fetchall()
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            return "error", index
        results.append(conn.execute("SELECT last_insert_rowid(), changes()").fetchone())
    conn.execute("COMMIT")
    return "ok", results


def twin_run(conn: Any, module: ModuleType, statements: list[str],
             params: list[tuple[Any, ...]]) -> tuple[str, Any]:
    """("ok", results) or ("error", (index, code))."""
    try:
        return "ok", conn.run(statements, params)
    except module.BatchError as exc:
        assert isinstance(exc.message, str) and exc.message
        return "error", (exc.index, exc.code)


def dump(path: str) -> list[str]:
    """Every row of every table, as repr (tells -0.0 from 0.0, int from float, str from bytes)."""
    conn = sqlite3.connect(path)
    try:
        return [repr(row) for table in ("parent", "t")
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


DIFF_SETTINGS = settings(max_examples=100, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@DIFF_SETTINGS
@given(plan=st.lists(batches(), min_size=1, max_size=4))
def test_differential_against_sqlite3(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path,
                                      plan: list[tuple[list[str], list[tuple[Any, ...]], int | None, int | None]],
                                      ) -> None:
    twin_path, ref_path = make_db(tmp_path, DIFF_SCHEMA), make_db(tmp_path, DIFF_SCHEMA)
    twin = sqlbatch_impl.BatchConnection(twin_path, synchronous="OFF")
    ref = reference_connection(ref_path)
    try:
        for statements, params, bad_at, bad_code in plan:
            before = dump(ref_path)
            expected = reference_run(ref, statements, params)
            got = twin_run(twin, sqlbatch_impl, statements, params)
            if bad_at is None:
                assert expected[0] == "ok"
                assert got == ("ok", expected[1])
            else:  # (lastrowid after it stays comparable: what the statements that ran left behind)
                assert expected == ("error", bad_at)
                assert got == ("error", (bad_at, bad_code))
                assert dump(ref_path) == before  # nothing of the failed batch, earlier batches kept
            assert dump(twin_path) == dump(ref_path)
    finally:
        twin.close()
        ref.close()


@pytest.mark.c_extension
@DIFF_SETTINGS
@given(plan=st.lists(batches(), min_size=1, max_size=4))
def test_twins_agree_on_random_batches(both_twins: tuple[ModuleType, ModuleType], tmp_path: pathlib.Path,
                                       plan: list[tuple[list[str], list[tuple[Any, ...]], int | None, int | None]],
                                       ) -> None:
    py, c = both_twins
    py_path, c_path = make_db(tmp_path, DIFF_SCHEMA), make_db(tmp_path, DIFF_SCHEMA)
    py_conn = py.BatchConnection(py_path, synchronous="OFF")
    c_conn = c.BatchConnection(c_path, synchronous="OFF")
    try:
        for statements, params, _, _ in plan:
            assert twin_run(py_conn, py, statements, params) == twin_run(c_conn, c, statements, params)
            assert dump(py_path) == dump(c_path)
    finally:
        py_conn.close()
        c_conn.close()


# --------------------------------------------------------------------------- 3. errors

ERR_SCHEMA = """
CREATE TABLE parent(id INTEGER PRIMARY KEY);
CREATE TABLE t(
    id INTEGER PRIMARY KEY,
    a TEXT NOT NULL,
    pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED
);
"""
INSERT_A = "INSERT INTO t(a) VALUES (?)"


def count_t(path: str) -> int:
    return read(path, "SELECT count(*) FROM t")[0][0]


def test_begin_failure_is_index_minus_one(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_A], [("x",)], begin="BEGIN NONSENSE")
    assert (info.value.index, info.value.code) == (-1, SQLITE_ERROR)
    assert "statement -1" in str(info.value)
    assert count_t(path) == 0
    assert conn.run([INSERT_A], [("x",)], begin="BEGIN") == [(1, 1)]  # no transaction was left open
    assert count_t(path) == 1


def test_commit_failure_is_index_len_and_rolls_back(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    assert conn.run(["INSERT INTO parent(id) VALUES (1)", INSERT_A], [(), ("kept",)]) == [(1, 1), (1, 1)]
    statements = [INSERT_A, "INSERT INTO t(a, pid) VALUES (?, ?)", INSERT_A]
    params = [("a",), ("dangling", 99), ("b",)]  # the deferred FK is only checked at COMMIT
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run(statements, params)
    assert (info.value.index, info.value.code) == (3, SQLITE_CONSTRAINT)
    assert "FOREIGN KEY" in info.value.message
    assert read(path, "SELECT a FROM t") == [("kept",)]
    # rolled back, not left open: the next batch begins and commits
    assert conn.run(["INSERT INTO t(a, pid) VALUES (?, ?)"], [("ok", 1)]) == [(2, 1)]
    assert count_t(path) == 2


def test_busy_database(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t(a) VALUES ('other')")
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run([INSERT_A], [("x",)])
        assert (info.value.index, info.value.code) == (-1, SQLITE_BUSY)
        # a deferred BEGIN gets the lock at the first write, which is then the failing statement
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run(["SELECT count(*) FROM t", INSERT_A], [(), ("x",)], begin="BEGIN")
        assert (info.value.index, info.value.code) == (1, SQLITE_BUSY)
        other.execute("COMMIT")
    finally:
        other.close()
    assert conn.run([INSERT_A], [("x",)]) == [(2, 1)]
    assert read(path, "SELECT a FROM t ORDER BY id") == [("other",), ("x",)]


@pytest.mark.parametrize(
    ("statements", "params", "index"),
    [
        (["INSERT INTO t(a) VALUES ('1'); INSERT INTO t(a) VALUES ('2')"], [()], 0),
        ([INSERT_A, "INSERT INTO t(a) VALUES (?); DELETE FROM t"], [("x",), ("y",)], 1),
        ([INSERT_A, "INSERT INTO t(a) VALUES (NULL)"], [("x",), ()], 1),
        ([INSERT_A, "INSERT INTO nowhere VALUES (1)"], [("x",), ()], 1),
        ([INSERT_A, INSERT_A, INSERT_A], [("x",), ("y",), ()], 2),
        ([INSERT_A, INSERT_A], [("x",), (["list"],)], 1),
        ([INSERT_A, INSERT_A], [("x",), (1 << 64,)], 1),
        ([INSERT_A, b"SELECT 1"], [("x",), ()], 1),
        ([INSERT_A, "SELEC 1"], [("x",), ()], 1),
    ],
    ids=["two-statements", "two-statements-later", "not-null", "no-table", "bindings", "type",
         "int-overflow", "bytes-sql", "syntax"],
)
def test_failing_statement_rolls_back_the_batch(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path,
                                                statements: list[Any], params: list[tuple[Any, ...]],
                                                index: int) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    conn.run([INSERT_A], [("before",)])
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run(statements, params)
    assert info.value.index == index
    assert isinstance(info.value.code, int) and 0 < info.value.code < 256
    assert read(path, "SELECT a FROM t") == [("before",)]
    assert conn.run([INSERT_A], [("after",)]) == [(2, 1)]


def test_error_codes(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    cases = [
        (["INSERT INTO t(a) VALUES (NULL)"], [()], SQLITE_CONSTRAINT),
        (["INSERT INTO nowhere VALUES (1)"], [()], SQLITE_ERROR),
        ([INSERT_A], [("x", "y")], SQLITE_RANGE),
        ([INSERT_A], [()], SQLITE_RANGE),
        ([INSERT_A], [(Decimal(1),)], SQLITE_MISMATCH),
        ([INSERT_A], [({"a": 1},)], SQLITE_MISMATCH),
        ([INSERT_A], [(INT64_MIN - 1,)], SQLITE_MISMATCH),
        ([1234], [()], SQLITE_MISUSE),
    ]
    for statements, params, code in cases:
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run(statements, params)
        assert (info.value.index, info.value.code) == (0, code), statements
    assert count_t(path) == 0


def test_mismatched_lengths_run_nothing(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    with pytest.raises(ValueError, match="2 statements but 1 parameter"):
        conn.run([INSERT_A, INSERT_A], [("x",)])
    with pytest.raises(ValueError):
        conn.run([], [()], begin=None, commit=False)
    assert count_t(path) == 0
    assert conn.run([INSERT_A], [("x",)]) == [(1, 1)]  # no transaction left behind


def test_closed_connection(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    conn.close()
    assert conn.closed
    conn.close()  # idempotent
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_A], [("x",)])
    assert (info.value.index, info.value.code) == (-1, SQLITE_MISUSE)
    assert count_t(path) == 0


def test_constructor_options(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    for bad in ("fast", "", "FULL;"):
        with pytest.raises(ValueError, match="synchronous"):
            sqlbatch_impl.BatchConnection(path, synchronous=bad)
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        sqlbatch_impl.BatchConnection(path, busy_timeout_ms=-1)
    for mode in ("off", "Normal", "FULL", "extra"):
        sqlbatch_impl.BatchConnection(path, synchronous=mode).close()
    # foreign_keys=False: a dangling reference commits; pragmas are run after opening
    conn = sqlbatch_impl.BatchConnection(path, foreign_keys=False, pragmas=("user_version = 7",))
    assert conn.run(["INSERT INTO t(a, pid) VALUES (?, ?)"], [("x", 99)]) == [(1, 1)]
    assert read(path, "PRAGMA user_version") == [(7,)]
    conn.close()


def test_transaction_left_to_the_caller(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, busy_timeout_ms=50)
    # commit=False: the transaction the call began stays open (invisible to others) ...
    assert conn.run([INSERT_A], [("a",)], commit=False) == [(1, 1)]
    assert count_t(path) == 0
    # ... a second BEGIN fails at -1 and leaves it alone ...
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_A], [("nested",)])
    assert (info.value.index, info.value.code) == (-1, SQLITE_ERROR)
    # ... more statements join it with begin=None, commit=False ...
    assert conn.run([INSERT_A], [("b",)], begin=None, commit=False) == [(2, 1)]
    # ... a failing statement there rolls back only itself: the call began nothing ...
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_A, "INSERT INTO t(a) VALUES (NULL)"], [("c",), ()], begin=None, commit=False)
    assert (info.value.index, info.value.code) == (1, SQLITE_CONSTRAINT)
    assert count_t(path) == 0
    # ... and run([], [], begin=None) commits it.
    assert conn.run([], [], begin=None) == []
    assert read(path, "SELECT a FROM t ORDER BY id") == [("a",), ("b",), ("c",)]
    # with no transaction open, COMMIT fails at len(statements)
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([], [], begin=None)
    assert (info.value.index, info.value.code) == (0, SQLITE_ERROR)
    # begin=None, commit=False outside a transaction: each statement commits on its own
    assert conn.run([INSERT_A], [("auto",)], begin=None, commit=False) == [(4, 1)]
    assert count_t(path) == 4
    # a transaction begun by a statement of the caller's own
    assert conn.run(["BEGIN IMMEDIATE", INSERT_A], [(), ("own",)], begin=None, commit=False) == [(4, 1), (5, 1)]
    assert count_t(path) == 4
    assert conn.run([INSERT_A], [("last",)], begin=None, commit=True) == [(6, 1)]
    assert count_t(path) == 6
    # a deferred FK violated in the caller's transaction: COMMIT fails and is left to the caller
    conn.run(["INSERT INTO t(a, pid) VALUES (?, ?)"], [("dangling", 5)], commit=False)
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([], [], begin=None)
    assert (info.value.index, info.value.code) == (0, SQLITE_CONSTRAINT)
    assert conn.run(["ROLLBACK"], [()], begin=None, commit=False) == [(7, 1)]
    assert count_t(path) == 6
    conn.close()


# --------------------------------------------------------------------------- 3b. the contract's rules


class _Params(Sequence):  # type: ignore[type-arg]
    """A parameter sequence that is neither tuple nor list; ``on_get`` runs at each item read."""

    def __init__(self, *items: Any, on_get: Callable[[], Any] | None = None) -> None:
        self.items = items
        self.on_get = on_get

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        if self.on_get is not None:
            self.on_get()
        return self.items[i]


REFUSED_ARGUMENTS = [  # (statements, params, index, code): the first statement the checks refuse
    ([INSERT_A, 42], [("x",), ()], 1, SQLITE_MISUSE),
    ([INSERT_A, b"SELECT 1"], [("x",), ()], 1, SQLITE_MISUSE),
    ([INSERT_A, "SELECT 1\x00"], [("x",), ()], 1, SQLITE_MISUSE),
    ([INSERT_A, "SELECT '\ud800'"], [("x",), ()], 1, SQLITE_MISUSE),
    ([INSERT_A, INSERT_A], [("x",), None], 1, SQLITE_MISUSE),
    ([INSERT_A, INSERT_A], [("x",), 7], 1, SQLITE_MISUSE),
    ([INSERT_A, INSERT_A], [("x",), {"a": "y"}], 1, SQLITE_MISUSE),  # named parameters: not supported
    ([INSERT_A, INSERT_A], [("x",), "y"], 1, SQLITE_MISUSE),  # a str is a value, not a sequence of them
    ([INSERT_A, INSERT_A], [("x",), b"y"], 1, SQLITE_MISUSE),
    ([INSERT_A, INSERT_A], [("x",), iter(["y"])], 1, SQLITE_MISUSE),
    ([INSERT_A, INSERT_A], [("x",), (bytearray(b"y"),)], 1, SQLITE_MISMATCH),
    ([INSERT_A, INSERT_A], [("x",), (memoryview(b"y"),)], 1, SQLITE_MISMATCH),
    ([INSERT_A, INSERT_A], [("x",), (Decimal(1),)], 1, SQLITE_MISMATCH),
    ([INSERT_A, INSERT_A], [("x",), (INT64_MAX + 1,)], 1, SQLITE_MISMATCH),
    ([INSERT_A, INSERT_A], [("x",), (INT64_MIN - 1,)], 1, SQLITE_MISMATCH),
    ([INSERT_A, INSERT_A], [("x",), ("ok\ud800",)], 1, SQLITE_MISMATCH),
    # the first refused statement wins over later ones, and over what earlier ones would do when run
    (["INSERT INTO t(a) VALUES (NULL)", INSERT_A, 42], [(), (Decimal(1),), ()], 1, SQLITE_MISMATCH),
    (["INSERT INTO nowhere VALUES (1)", "x\x00", INSERT_A], [(), (), None], 1, SQLITE_MISUSE),
    (["SELECT 1; SELECT 2", INSERT_A, INSERT_A], [(), ("x",), ("y", 1j)], 2, SQLITE_MISMATCH),
]


@pytest.mark.parametrize(("statements", "params", "index", "code"), REFUSED_ARGUMENTS)
def test_arguments_are_checked_before_anything_runs(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path,
                                                    statements: list[Any], params: list[Any], index: int,
                                                    code: int) -> None:
    """Refused before BEGIN: another connection holds the write lock, so any BEGIN IMMEDIATE would fail
    (-1, SQLITE_BUSY); and nothing of the batch runs."""
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, busy_timeout_ms=20)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run(statements, params)
        assert (info.value.index, info.value.code) == (index, code)
        assert isinstance(info.value.message, str) and info.value.message
        with pytest.raises(sqlbatch_impl.BatchError) as info:  # the same with begin=None: nothing ran
            conn.run(statements, params, begin=None, commit=False)
        assert (info.value.index, info.value.code) == (index, code)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert count_t(path) == 0
    assert conn.run([INSERT_A], [("after",)]) == [(1, 1)]
    conn.close()


def test_refusal_messages(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    conn = sqlbatch_impl.BatchConnection(make_db(tmp_path, ERR_SCHEMA))
    cases = [
        ([b"SELECT 1"], [()], "statement must be str, not bytes"),
        (["SELECT 1\x00"], [()], "the query contains a null character"),
        (["SELECT '\ud800'"], [()], "surrogates not allowed"),
        ([INSERT_A], [None], "parameters must be a sequence such as a tuple or list, not NoneType"),
        ([INSERT_A], [(bytearray(b"x"),)], "parameter 1: type 'bytearray' is not supported"),
        (["SELECT ?, ?"], [(1, 1 << 64)], "parameter 2: Python int too large to convert to SQLite INTEGER"),
        ([INSERT_A], [("\udfff",)], "parameter 1: 'utf-8' codec can't encode character '\\udfff' in position 0"),
    ]
    for statements, params, message in cases:
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run(statements, params)
        assert message in info.value.message
        assert str(info.value).startswith("statement 0: ")
    conn.close()


class _Kind(enum.IntEnum):
    SALE = 7


class _Int(int):
    def __int__(self) -> int:
        return -1


class _Str(str):
    __slots__ = ()

    def __str__(self) -> str:
        return "not me"


class _Bytes(bytes):
    def __bytes__(self) -> bytes:
        return b"not me"


class _Float(float):
    def __float__(self) -> float:
        return -1.0


def test_accepted_sequences_and_subclasses(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """Any Sequence other than str / bytes / bytearray / memoryview is a parameter sequence; a subclass
    of a supported type is bound as its base value (no __int__ / __str__ / ... of its own is called), and
    a str subclass is a statement text."""
    path = make_db(tmp_path, "CREATE TABLE v(id INTEGER PRIMARY KEY, x);")
    conn = sqlbatch_impl.BatchConnection(path)
    insert = "INSERT INTO v(x) VALUES (?)"
    params: list[Any] = [[1], (2,), range(3, 4), _Params(4), (True,), (_Kind.SALE,), (_Int(8),), (_Str("s"),),
                         (_Bytes(b"b"),), (_Float(1.5),)]
    result = conn.run([insert] * (len(params) - 1) + [_Str(insert)], params)
    assert result == [(i + 1, 1) for i in range(len(params))]
    assert read(path, "SELECT x, typeof(x) FROM v ORDER BY id") == [
        (1, "integer"), (2, "integer"), (3, "integer"), (4, "integer"), (1, "integer"), (7, "integer"),
        (8, "integer"), ("s", "text"), (b"b", "blob"), (1.5, "real")]
    conn.close()


def test_begin_is_checked_as_a_statement(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    conn.run([INSERT_A], [("kept",)])
    for begin, code in [(b"BEGIN", SQLITE_MISUSE), (1, SQLITE_MISUSE), ("BEGIN\x00", SQLITE_MISUSE),
                        ("BEGIN -- \ud800", SQLITE_MISUSE), ("BEGIN; DELETE FROM t", SQLITE_MISUSE),
                        ("BEGIN;;", SQLITE_MISUSE), ("SELECT ?", SQLITE_RANGE), ("BEGIN NONSENSE", SQLITE_ERROR)]:
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run([INSERT_A], [("x",)], begin=begin)
        assert (info.value.index, info.value.code) == (-1, code), begin
    assert read(path, "SELECT a FROM t") == [("kept",)]
    # what may follow a statement may follow begin; rows it returns are dropped
    assert conn.run([INSERT_A], [("a",)], begin="BEGIN IMMEDIATE; -- the batch") == [(2, 1)]
    assert conn.run([INSERT_A], [("b",)], begin="SELECT 1 UNION SELECT 2", commit=False) == [(3, 1)]
    # an empty begin begins nothing: each statement commits on its own
    assert conn.run([INSERT_A], [("c",)], begin="  ", commit=False) == [(4, 1)]
    assert count_t(path) == 4
    conn.close()


_V = "INSERT INTO t(a) VALUES ('v')"
STATEMENT_TEXTS = [
    "", "   ", "-- x", "/* x */", "/* unterminated", ";", " ; ", ";;", "\n;\n;\n", f"; {_V}", "SELEC 1; x",
    *(_V + tail for tail in [";", ";;", " ; ;", "; -- c", "; /* c */", "; /* c", " -- c", " /* c */",
                             ";\n-- a\n\t/* b */\r\n\f", "; \v", "; -", "; /", "; SELECT 1", "; x",
                             "; -- c\nSELECT 1"]),
]


@pytest.mark.parametrize("values", [(), ("p",)], ids=["no-params", "one-param"])
@pytest.mark.parametrize("text", STATEMENT_TEXTS)
def test_statement_text_as_the_sqlite3_module(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path, text: str,
                                              values: tuple[Any, ...]) -> None:
    """What may follow a statement, statements with none in them, and the number of bindings: the
    sqlite3 module's verdict (its ProgrammingError as SQLITE_MISUSE, a wrong count as SQLITE_RANGE)."""
    ref_path, path = make_db(tmp_path, ERR_SCHEMA), make_db(tmp_path, ERR_SCHEMA)
    ref = sqlite3.connect(ref_path, isolation_level=None)
    try:
        ref.execute(INSERT_A, ("first",))
        try:
            ref.execute(text, values).fetchall()
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None:
                code = SQLITE_RANGE if "Incorrect number of bindings" in str(exc) else SQLITE_MISUSE
            expected: tuple[Any, ...] = ("error", 1, code, str(exc))
        else:
            expected = ("ok", [(1, 1), ref.execute("SELECT last_insert_rowid(), changes()").fetchone()])
    finally:
        ref.close()
    conn = sqlbatch_impl.BatchConnection(path)
    try:
        got: tuple[Any, ...] = ("ok", conn.run([INSERT_A, text], [("first",), values]))
    except sqlbatch_impl.BatchError as exc:
        got = ("error", exc.index, exc.code, exc.message)
        assert count_t(path) == 0
    assert got == expected
    if expected[0] == "ok":
        assert dump_t(path) == dump_t(ref_path)
    conn.close()


def dump_t(path: str) -> list[tuple]:
    return read(path, "SELECT * FROM t ORDER BY id")


def test_statements_run_in_their_turn(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """Each statement is prepared when its turn comes, so it sees what earlier ones did to the schema,
    and with several failing statements the first one is reported."""
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    insert_n = "INSERT INTO n VALUES (?)"
    assert conn.run(["CREATE TABLE n(a)", insert_n, "DROP TABLE n", "CREATE TABLE n(b INTEGER PRIMARY KEY)",
                     insert_n, "SELECT * FROM n"], [(), (1,), (), (), (20,), ()]) == [
        (0, 0), (1, 1), (1, 1), (1, 1), (20, 1), (20, 1)]
    assert read(path, "SELECT * FROM n") == [(20,)]
    # the same statement again after the schema changed under it, in the same batch: SQLite's error
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([insert_n, "DROP TABLE n", "CREATE TABLE n(a, b NOT NULL)", insert_n], [(3,), (), (), (4,)])
    assert (info.value.index, info.value.code) == (3, SQLITE_ERROR)
    assert "2 columns but 1 values" in info.value.message
    assert read(path, "SELECT * FROM n") == [(20,)]
    first_failure = [
        (["INSERT INTO t(a) VALUES (NULL)", "INSERT INTO nowhere VALUES (1)"], [(), ()], 0, SQLITE_CONSTRAINT),
        (["INSERT INTO nowhere VALUES (1)", INSERT_A], [(), ()], 0, SQLITE_ERROR),
        ([INSERT_A, "SELECT 1;;", "INSERT INTO t(a) VALUES (NULL)"], [("x",), (), ()], 1, SQLITE_MISUSE),
        ([INSERT_A, INSERT_A, "SELEC"], [("x",), ("x", "y"), ()], 1, SQLITE_RANGE),
        (["CREATE TABLE m(a)", "INSERT INTO m VALUES (1, 2)"], [(), ()], 1, SQLITE_ERROR),
    ]
    for statements, params, index, code in first_failure:
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run(statements, params)
        assert (info.value.index, info.value.code) == (index, code), statements
    assert count_t(path) == 0
    assert read(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'm'") == [(0,)]
    conn.close()


def test_lastrowid_after_a_failed_batch(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """last_insert_rowid() / changes() are SQLite's: the rollback does not undo them."""
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    assert conn.run([INSERT_A, INSERT_A], [("a",), ("b",)]) == [(1, 1), (2, 1)]
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([INSERT_A, "DELETE FROM t", "INSERT INTO t(a) VALUES (NULL)"], [("c",), (), ()])
    assert info.value.index == 2
    # the rolled-back INSERT's rowid; changes() as the failed INSERT left it
    assert conn.run(["SELECT 1", ""], [(), ()]) == [(3, 0), (3, 0)]
    with pytest.raises(sqlbatch_impl.BatchError):  # refused before anything ran: nothing changes
        conn.run([INSERT_A, INSERT_A], [("d",), (1j,)])
    assert conn.run(["SELECT 1"], [()]) == [(3, 0)]
    assert dump_t(path) == [(1, "a", None), (2, "b", None)]
    conn.close()


def test_run_and_close_refused_during_a_run(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """Code run by the call itself (a parameter sequence's __getitem__) cannot close the connection
    or start another batch on it."""
    path = make_db(tmp_path, ERR_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path)
    for action in (conn.close, lambda: conn.run([INSERT_A], [("inner",)])):
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run([INSERT_A, INSERT_A], [("x",), _Params("y", on_get=action)])
        assert (info.value.index, info.value.code) == (-1, SQLITE_MISUSE)
        assert "in use" in info.value.message
    assert not conn.closed
    assert conn.run([INSERT_A], [("after",)]) == [(1, 1)]
    assert dump_t(path) == [(1, "after", None)]
    conn.close()


def test_constructor_paths_and_errors(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, ERR_SCHEMA)

    class FsPath:
        def __fspath__(self) -> str:
            return path

    for as_given in (pathlib.Path(path), FsPath(), os.fsencode(path)):
        conn = sqlbatch_impl.BatchConnection(as_given)
        assert conn.path == path and type(conn.path) is str
        conn.close()
    for bad_type in (None, 42):
        with pytest.raises(TypeError):
            sqlbatch_impl.BatchConnection(bad_type)
    with pytest.raises(ValueError, match="embedded null byte"):
        sqlbatch_impl.BatchConnection(path + "\x00.db")
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"garbage" * 1000)
    cases: list[tuple[Any, tuple[str, ...], int]] = [
        (tmp_path / "missing" / "x.db", (), 14),  # SQLITE_CANTOPEN
        (tmp_path, (), 14),
        (not_a_db, ("journal_mode=WAL",), 26),  # SQLITE_NOTADB
        (path, ("nonsense(",), SQLITE_ERROR),
        (path, ("user_version = 5; DELETE FROM t",), SQLITE_MISUSE),
        (path, ("user_version = 5;;",), SQLITE_MISUSE),
        (path, ("user_version\x00",), SQLITE_MISUSE),
    ]
    for where, pragmas, code in cases:
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            sqlbatch_impl.BatchConnection(where, pragmas=pragmas)
        assert (info.value.index, info.value.code) == (-1, code), (where, pragmas)
        if not pragmas:
            assert info.value.message.startswith(f"cannot open {where}: ")
    assert read(path, "PRAGMA user_version") == [(0,)]
    conn = sqlbatch_impl.BatchConnection(path, pragmas=("user_version = 5; -- set", "table_info(t)"))
    assert read(path, "PRAGMA user_version") == [(5,)]
    conn.close()


def test_pure_twin_rolls_back_on_any_exception(tmp_path: pathlib.Path) -> None:
    """The transaction the call began does not stay open whatever escapes (here a KeyboardInterrupt from
    the second statement): the next batch can BEGIN IMMEDIATE."""
    from _fastcore import _sqlbatch_py as py

    path = make_db(tmp_path, ERR_SCHEMA)
    conn = py.BatchConnection(path, busy_timeout_ms=20)
    real = conn._conn

    class Interrupted:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "SELECT 'interrupt'":
                raise KeyboardInterrupt
            return real.execute(sql, *args)

    conn._conn = Interrupted()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        conn.run([INSERT_A, "SELECT 'interrupt'"], [("x",), ()])
    assert real is not None and not real.in_transaction
    conn._conn = real
    assert conn.run([INSERT_A], [("y",)]) == [(1, 1)]  # (rowid 1 again: the first one was rolled back)
    assert dump_t(path) == [(1, "y", None)]
    conn.close()


# --------------------------------------------------------------------------- 4. statement reuse

REUSE_SCHEMA = "CREATE TABLE kv(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v);"


def test_same_statement_many_times(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, REUSE_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, synchronous="OFF")
    sql = "INSERT INTO kv(k, v) VALUES (?, ?)"
    for batch in range(3):
        base = batch * 500
        result = conn.run([sql] * 500, [(base + i, f"v{base + i}") for i in range(500)])
        assert result == [(base + i + 1, 1) for i in range(500)]
    # a failure mid-batch resets the statement: the next use binds fresh values
    with pytest.raises(sqlbatch_impl.BatchError) as info:
        conn.run([sql, sql, sql], [(1, "x"), (None, "y"), (3, "z")])
    assert info.value.index == 1
    assert conn.run([sql, sql], [(1, None), (2, b"\x00")]) == [(1501, 1), (1502, 1)]
    assert read(path, "SELECT k, v FROM kv WHERE id > 1500") == [(1, None), (2, b"\x00")]
    assert read(path, "SELECT count(*), sum(k) FROM kv") == [(1502, sum(range(1500)) + 3)]


def test_more_distinct_statements_than_the_cache(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, REUSE_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, synchronous="OFF")
    texts = [f"INSERT INTO kv(k, v) VALUES ({k}, ?)" for k in range(320)]
    expected_rows = []
    rowid = 0
    # over several batches, twice round (the second round hits a cache that was emptied past 256)
    for _ in range(2):
        for start in range(0, len(texts), 45):
            chunk = texts[start:start + 45]
            result = conn.run(chunk, [(f"s{start}",)] * len(chunk))
            assert result == [(rowid + i + 1, 1) for i in range(len(chunk))]
            rowid += len(chunk)
            expected_rows += [(start + i, f"s{start}") for i in range(len(chunk))]
    # all of them in one batch, the first one again at the end (cache emptied mid-batch)
    result = conn.run(texts + [texts[0]], [(i,) for i in range(len(texts) + 1)])
    assert result == [(rowid + i + 1, 1) for i in range(len(texts) + 1)]
    expected_rows += [(k, k) for k in range(320)] + [(0, 320)]
    assert read(path, "SELECT k, v FROM kv ORDER BY id") == expected_rows


def test_statements_refused_or_empty_are_not_reused(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """A text refused after it was prepared (more than one statement) is refused every time (never
    kept), a text with no statement is a no-op every time, and a new text used several times in one
    batch (prepared at its first use) runs each time with its own values."""
    path = make_db(tmp_path, REUSE_SCHEMA)
    conn = sqlbatch_impl.BatchConnection(path, synchronous="OFF")
    two = "INSERT INTO kv(k) VALUES (?); DELETE FROM kv"
    sql = "INSERT INTO kv(k, v) VALUES (?, 'new text')"
    for _ in range(3):
        with pytest.raises(sqlbatch_impl.BatchError) as info:
            conn.run([sql, two], [(0,), (1,)])
        assert (info.value.index, info.value.code) == (1, SQLITE_MISUSE)
    empty = "/* nothing */"
    # (the first no-op reports the rolled-back INSERT's rowid, which the next INSERT takes again)
    assert conn.run([empty, sql, empty, sql, sql, empty], [(), (1,), (), (2,), (3,), ()]) == [
        (1, 1), (1, 1), (1, 1), (2, 1), (3, 1), (3, 1)]
    assert conn.run([sql, empty], [(4,), ()]) == [(4, 1), (4, 1)]
    assert read(path, "SELECT k FROM kv ORDER BY id") == [(1,), (2,), (3,), (4,)]
    conn.close()


def test_statements_survive_schema_changes(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    path = make_db(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b);")
    conn = sqlbatch_impl.BatchConnection(path)
    insert, select = "INSERT INTO t(a, b) VALUES (?, ?)", "SELECT * FROM t"
    assert conn.run([insert, select], [(1, 2), ()]) == [(1, 1), (1, 1)]
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'z'")
        assert conn.run([insert, select, "UPDATE t SET c = ? WHERE id = ?"], [(3, 4), (), ("y", 1)]) == [
            (2, 1), (2, 1), (2, 1)]
        # the table replaced by one with its columns in another order: the cached INSERT is re-prepared
        other.executescript("DROP TABLE t; CREATE TABLE t(b, extra DEFAULT 'e', a, id INTEGER PRIMARY KEY);")
        assert conn.run([insert, select], [(5, 6), ()]) == [(1, 1), (1, 1)]
    finally:
        other.close()
    assert read(path, "SELECT id, a, b, extra FROM t") == [(1, 5, 6, "e")]


# --------------------------------------------------------------------------- 5. the GIL


@pytest.mark.parametrize("sqlbatch_impl", [TWINS[1]], indirect=True)
def test_compiled_twin_runs_without_the_gil(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path) -> None:
    """The batch can only finish after the main thread runs Python code: the main thread holds the
    write lock, and releases it only after counting, while the batch is still in progress.  Were the
    GIL held during ``run``, the main thread could not run until ``run`` gave up (SQLITE_BUSY).

    The switch interval is raised while the thread starts so that the main thread cannot be given
    the GIL by a forced switch before the thread is inside ``run``: from then on only a GIL released
    by ``run`` lets it in."""
    path = make_db(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT);")
    conn = sqlbatch_impl.BatchConnection(path, synchronous="OFF", busy_timeout_ms=5000)
    statements = [
        "INSERT INTO t(a, b) SELECT x, printf('row %d', x) FROM "
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c)",
        "UPDATE t SET a = -a WHERE a % ? = 0",
    ]
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def worker() -> None:
        try:
            outcome["result"] = conn.run(statements, [(200_000,), (2,)])
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc
        finally:
            done.set()

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    old_interval = sys.getswitchinterval()
    thread = threading.Thread(target=worker)
    try:
        sys.setswitchinterval(5.0)  # longer than the thread needs to reach run()
        thread.start()  # returns once the GIL is free: the thread is blocked in run() without it
        sys.setswitchinterval(old_interval)
        counter = 0
        for _ in range(100_000):
            counter += 1
        in_progress = not done.is_set()
        holder.execute("COMMIT")
        thread.join(60)
    finally:
        sys.setswitchinterval(old_interval)
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert counter == 100_000 and in_progress
    assert outcome["result"] == [(200_000, 200_000), (200_000, 100_000)]
    assert read(path, "SELECT count(*), sum(a < 0), max(b) FROM t") == [(200_000, 100_000, "row 99999")]
    conn.close()


# --------------------------------------------------------------------------- twins compared directly

Case = Callable[[ModuleType, str], Any]


def _outcome(module: ModuleType, path: str, fn: Case) -> tuple[Any, ...]:
    try:
        result: tuple[Any, ...] = ("ok", fn(module, path))
    except module.BatchError as exc:
        result = ("BatchError", exc.index, exc.code)
    except Exception as exc:
        result = (type(exc).__name__,)
    return result + (read(path, "SELECT a FROM t ORDER BY id"),)


def _run(statements: list[Any], params: list[Any], **kw: Any) -> Case:
    return lambda m, path: m.BatchConnection(path).run(statements, params, **kw)


def _then_run_again(first: Callable[[Any], Any]) -> Case:
    """``first(connection)``, then whether the same connection can still run a batch."""

    def case(m: ModuleType, path: str) -> Any:
        conn = m.BatchConnection(path, busy_timeout_ms=50)
        try:
            first(conn)
        except Exception as exc:
            first_outcome = type(exc).__name__
        else:
            first_outcome = "ok"
        return first_outcome, conn.run([INSERT_A], [("after",)])

    return case


def _batch_with(statements: list[Any], params: list[Any], **kw: Any) -> Callable[[Any], Any]:
    return lambda conn: conn.run(statements, params, **kw)


def _begin_none_after_open(statements: list[Any], params: list[Any]) -> Case:
    def case(m: ModuleType, path: str) -> Any:
        conn = m.BatchConnection(path)
        conn.run([], [], commit=False)
        try:
            conn.run(statements, params, begin=None, commit=False)
        finally:
            conn.run([], [], begin=None)

    return case


def _lastrowid_after_failed_batch(m: ModuleType, path: str) -> Any:
    conn = m.BatchConnection(path)
    try:
        conn.run([INSERT_A, "INSERT INTO nowhere VALUES (1)"], [("x",), ()])
    except m.BatchError:
        pass
    return conn.run(["UPDATE t SET a = 'y'"], [()])


AGREEING: dict[str, Case] = {
    "syntax": _run([INSERT_A, "SELEC 1"], [("x",), ()]),
    "returning": _run(["INSERT INTO t(a) VALUES ('x'), ('y') RETURNING id", "SELECT * FROM t"], [(), ()]),
    "cte-update": _run([INSERT_A, "WITH c AS (SELECT 1) UPDATE t SET a = 'z'", "SELECT 1"], [("x",), (), ()]),
    "trailing-semicolon": _run(["INSERT INTO t(a) VALUES ('x');  "], [()]),
    "trailing-comment": _run(["INSERT INTO t(a) VALUES ('x') -- note"], [()]),
    "named-parameters": _run(["INSERT INTO t(a) VALUES (:x)"], [("bound",)]),
    "begin-deferred": _run([INSERT_A], [("x",)], begin="BEGIN DEFERRED"),
    "commit-without-transaction": _run([], [], begin=None),
    "bool-float-str": _run(["INSERT INTO t(a) VALUES (? || ? || ?)"], [(True, 2.5, "s")]),
    "after-constraint-error": _then_run_again(_batch_with(["INSERT INTO t(a) VALUES (NULL)"], [()])),
}

#: edge cases where the twins once differed, with the outcome they now agree on (the contract's rules):
#: ("ok", result, rows of t) or ("BatchError", index, code, rows of t)
AGREED: dict[str, tuple[Case, tuple[Any, ...]]] = {
    # statement text, as the sqlite3 module judges it
    "two-statements-code": (
        _run(["INSERT INTO t(a) VALUES ('1'); INSERT INTO t(a) VALUES ('2')"], [()]),
        ("BatchError", 0, SQLITE_MISUSE, [])),
    "double-semicolon": (_run(["INSERT INTO t(a) VALUES ('x');;"], [()]), ("BatchError", 0, SQLITE_MISUSE, [])),
    "semicolon-then-comment": (_run(["INSERT INTO t(a) VALUES ('x'); -- note"], [()]), ("ok", [(1, 1)], [("x",)])),
    "empty-statement": (_run([INSERT_A, "  -- nothing"], [("x",), ()]), ("ok", [(1, 1), (1, 1)], [("x",)])),
    "nul-in-sql": (_run(["INSERT INTO t(a) VALUES ('x')\x00 garbage"], [()]), ("BatchError", 0, SQLITE_MISUSE, [])),
    # statements prepared in their turn: SQLite's errors in statement order
    "ddl-then-use": (
        _run(["CREATE TABLE n(a)", "INSERT INTO n VALUES (?)", INSERT_A], [(), (1,), ("x",)]),
        ("ok", [(0, 0), (1, 1), (1, 1)], [("x",)])),
    "runtime-error-before-prepare-error": (
        _run(["INSERT INTO t(a) VALUES (NULL)", "INSERT INTO nowhere VALUES (1)"], [(), ()]),
        ("BatchError", 0, SQLITE_CONSTRAINT, [])),
    "runtime-error-before-binding-count": (
        _run(["INSERT INTO t(a) VALUES (NULL)", INSERT_A], [(), ()]),
        ("BatchError", 0, SQLITE_CONSTRAINT, [])),
    # the arguments of the whole batch are checked before anything runs
    "runtime-error-before-type-error": (
        _run(["INSERT INTO t(a) VALUES (NULL)", INSERT_A], [(), ([1],)]),
        ("BatchError", 1, SQLITE_MISMATCH, [])),
    "begin-none-type-error": (
        _begin_none_after_open([INSERT_A, INSERT_A], [("x",), (Decimal(1),)]),
        ("BatchError", 1, SQLITE_MISMATCH, [])),
    "lone-surrogate-leaves-transaction": (
        _then_run_again(_batch_with([INSERT_A, INSERT_A], [("x",), ("\ud800",)])),
        ("ok", ("BatchError", [(1, 1)]), [("after",)])),
    "params-not-a-sequence-leaves-transaction": (
        _then_run_again(_batch_with([INSERT_A, INSERT_A], [("x",), None])),
        ("ok", ("BatchError", [(1, 1)]), [("after",)])),
    # last_insert_rowid() is not undone by the rollback of a failed batch (statement 0 ran)
    "lastrowid-after-failed-batch": (_lastrowid_after_failed_batch, ("ok", [(1, 0)], [])),
    # the constructor
    "path-object": (
        lambda m, path: m.BatchConnection(pathlib.Path(path)).run([INSERT_A], [("x",)]),
        ("ok", [(1, 1)], [("x",)])),
    "bad-pragma": (
        lambda m, path: m.BatchConnection(path, pragmas=("nonsense(",)),
        ("BatchError", -1, SQLITE_ERROR, [])),
}


@pytest.mark.parametrize("name", sorted(AGREED))
def test_agreed_outcome(sqlbatch_impl: ModuleType, tmp_path: pathlib.Path, name: str) -> None:
    fn, expected = AGREED[name]
    assert _outcome(sqlbatch_impl, make_db(tmp_path, ERR_SCHEMA), fn) == expected


@pytest.mark.c_extension
@pytest.mark.parametrize("name", sorted(AGREEING) + sorted(AGREED))
def test_twins_agree_on_edge_cases(both_twins: tuple[ModuleType, ModuleType], tmp_path: pathlib.Path,
                                   name: str) -> None:
    py, c = both_twins
    fn = AGREEING[name] if name in AGREEING else AGREED[name][0]
    assert _outcome(py, make_db(tmp_path, ERR_SCHEMA), fn) == _outcome(c, make_db(tmp_path, ERR_SCHEMA), fn)
