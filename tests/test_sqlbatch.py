"""_fastcore.sqlbatch over both twins: one transaction of parameterised statements per call.

Known results (types round-tripped, (lastrowid, changes) per statement), a differential test against
the plain ``sqlite3`` module (hypothesis batches of INSERT / UPDATE / DELETE / SELECT with at most one
failing statement), the error paths (BEGIN, COMMIT, busy, closed, malformed calls), transactions left
to the caller, the compiled twin's statement cache (reuse, eviction past 256, schema changes), rows
stepped and dropped, and that the compiled twin runs a batch without the GIL.  ``test_twins_agree_*``
compares the two twins directly; the cases where they still differ are strict xfails (see
``DIVERGENCES``).
"""

from __future__ import annotations

import itertools
import math
import pathlib
import sqlite3
import sys
import threading
from collections.abc import Callable
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
              st.tuples(st.sampled_from([[1], {"a": 1}, Decimal("1.5"), bytearray(b"x"), 1j, (1,)]), ids),
              st.just(SQLITE_MISMATCH)),
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


def reference_connection(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def reference_run(conn: sqlite3.Connection, statements: list[str],
                  params: list[tuple[Any, ...]]) -> tuple[str, Any]:
    """The batch through the sqlite3 module: ("ok", results) or ("error", index)."""
    conn.execute("BEGIN IMMEDIATE")
    results = []
    for index, (sql, p) in enumerate(zip(statements, params, strict=True)):
        try:
            if not all(isinstance(value, SUPPORTED) for value in p):  # the module also takes bytearray
                raise sqlite3.ProgrammingError("unsupported parameter type")
            conn.execute(sql, p).fetchall()
        except (sqlite3.Error, OverflowError):
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


def mask_stale_rowids(statements: list[str], outcome: tuple[str, Any], stale: bool) -> tuple[tuple[str, Any], bool]:
    """After a failed batch, ``last_insert_rowid()`` is what the last INSERT that *ran* left behind, rolled
    back or not; the compiled twin runs nothing of a batch that fails its checks (statement that does not
    prepare, wrong count or type of parameters), the pure twin and sqlite3 run the statements before it
    (see DIVERGENCES["lastrowid-after-failed-batch"]).  So the lastrowid of a statement that is not an
    INSERT is masked from a failed batch until the next INSERT."""
    if outcome[0] != "ok":
        return outcome, True
    masked = []
    for sql, (rowid, changes) in zip(statements, outcome[1], strict=True):
        if sql.startswith("INSERT"):
            stale = False
        masked.append((None if stale else rowid, changes))
    return ("ok", masked), stale


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
        stale = stale_ref = False
        for statements, params, bad_at, bad_code in plan:
            before = dump(ref_path)
            expected, stale_ref = mask_stale_rowids(statements, reference_run(ref, statements, params), stale_ref)
            got, stale = mask_stale_rowids(statements, twin_run(twin, sqlbatch_impl, statements, params), stale)
            if bad_at is None:
                assert expected[0] == "ok"
                assert got == ("ok", expected[1])
            else:
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
        stale_py = stale_c = False
        for statements, params, _, _ in plan:
            py_outcome, stale_py = mask_stale_rowids(statements, twin_run(py_conn, py, statements, params), stale_py)
            c_outcome, stale_c = mask_stale_rowids(statements, twin_run(c_conn, c, statements, params), stale_c)
            assert py_outcome == c_outcome
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

#: where the twins still differ (py vs c); each is a strict xfail so that a fix shows up
DIVERGENCES: dict[str, tuple[Case, str]] = {
    "two-statements-code": (
        _run(["INSERT INTO t(a) VALUES ('1'); INSERT INTO t(a) VALUES ('2')"], [()]),
        "py reports SQLITE_ERROR (1), c SQLITE_MISUSE (21)"),
    "double-semicolon": (
        _run(["INSERT INTO t(a) VALUES ('x');;"], [()]),
        "py: 'one statement at a time' error; c: runs it"),
    "semicolon-then-comment": (
        _run(["INSERT INTO t(a) VALUES ('x'); -- note"], [()]),
        "py: runs it; c: 'one statement at a time' error"),
    "empty-statement": (
        _run([INSERT_A, "  -- nothing"], [("x",), ()]),
        "py: runs it as a no-op and commits; c: BatchError(1, 21, 'statement is empty')"),
    "nul-in-sql": (
        _run(["INSERT INTO t(a) VALUES ('x')\x00 garbage"], [()]),
        "py: error 'the query contains a null character'; c: runs the SQL before the NUL"),
    "ddl-then-use": (
        _run(["CREATE TABLE n(a)", "INSERT INTO n VALUES (?)", INSERT_A], [(), (1,), ("x",)]),
        "c prepares every statement before BEGIN: a table created earlier in the batch does not exist yet"),
    "runtime-error-before-prepare-error": (
        _run(["INSERT INTO t(a) VALUES (NULL)", "INSERT INTO nowhere VALUES (1)"], [(), ()]),
        "c reports the later statement that does not prepare (1) instead of the first failure (0)"),
    "runtime-error-before-type-error": (
        _run(["INSERT INTO t(a) VALUES (NULL)", INSERT_A], [(), ([1],)]),
        "c checks every parameter before running: index 1 instead of the first failure, 0"),
    "runtime-error-before-binding-count": (
        _run(["INSERT INTO t(a) VALUES (NULL)", INSERT_A], [(), ()]),
        "c checks every binding count before running: index 1 instead of the first failure, 0"),
    "begin-none-type-error": (
        _begin_none_after_open([INSERT_A, INSERT_A], [("x",), (Decimal(1),)]),
        "begin=None: py has run statement 0 in the caller's transaction before the type error, c nothing"),
    "lastrowid-after-failed-batch": (
        _lastrowid_after_failed_batch,
        "c runs nothing of a batch that fails its checks, py (and sqlite3) run the statements before: "
        "last_insert_rowid() then differs for the next statements that are not INSERTs"),
    "path-object": (
        lambda m, path: m.BatchConnection(pathlib.Path(path)).run([INSERT_A], [("x",)]),
        "c takes only str (TypeError for a pathlib.Path); py takes str(path)"),
    "bad-pragma": (
        lambda m, path: m.BatchConnection(path, pragmas=("nonsense(",)),
        "py raises sqlite3.OperationalError from the constructor, c BatchError(-1, 1)"),
    "lone-surrogate-leaves-transaction": (
        _then_run_again(_batch_with([INSERT_A, INSERT_A], [("x",), ("\ud800",)])),
        "py: UnicodeEncodeError escapes without ROLLBACK, the write transaction stays open and the next "
        "run fails at BEGIN; c raises before BEGIN"),
    "params-not-a-sequence-leaves-transaction": (
        _then_run_again(_batch_with([INSERT_A, INSERT_A], [("x",), None])),
        "py: TypeError from tuple(None) escapes without ROLLBACK (transaction left open); c raises before BEGIN"),
}


@pytest.mark.c_extension
@pytest.mark.parametrize("name", sorted(AGREEING))
def test_twins_agree_on_edge_cases(both_twins: tuple[ModuleType, ModuleType], tmp_path: pathlib.Path,
                                   name: str) -> None:
    py, c = both_twins
    fn = AGREEING[name]
    assert _outcome(py, make_db(tmp_path, ERR_SCHEMA), fn) == _outcome(c, make_db(tmp_path, ERR_SCHEMA), fn)


@pytest.mark.c_extension
@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))
             for name, (_, reason) in sorted(DIVERGENCES.items())])
def test_twins_agree_known_divergences(both_twins: tuple[ModuleType, ModuleType], tmp_path: pathlib.Path,
                                       name: str) -> None:
    py, c = both_twins
    fn = DIVERGENCES[name][0]
    assert _outcome(py, make_db(tmp_path, ERR_SCHEMA), fn) == _outcome(c, make_db(tmp_path, ERR_SCHEMA), fn)
