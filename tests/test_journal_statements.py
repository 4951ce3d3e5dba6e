"""The journal writer's statement batches: ``SqlOp`` batches run through ``_fastcore.sqlbatch``.

A batch made only of :class:`~switch.journal_sqlite.SqlOp` from the event loop (every batch of the
sale path) is committed by one ``BatchConnection.run`` call without the GIL; anything else, and such a
batch that fails, takes the general path on the ``sqlite3`` connection, where every operation gets its
own outcome.  Each test runs with both twins of ``_fastcore.sqlbatch``.
"""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import switch.journal_sqlite as js
from switch.journal import Journal, JournalError
from switch.journal_sqlite import SqliteWriter, SqlOp

KEY = bytes(range(32))
PAN = "6212345678901234567"
TID, MID = "00000001", "898310048140001"


@pytest.fixture(params=["py", pytest.param("c", marks=pytest.mark.c_extension)])
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The writer's ``BatchConnection`` taken from one twin (the selector picks the compiled one)."""
    from conftest import load_twin

    module = load_twin(request, "sqlbatch", request.param)
    monkeypatch.setattr(js, "BatchConnection", module.BatchConnection)
    return str(request.param)


def sale(stan: int, **kw: Any) -> dict[str, Any]:
    return dict(terminal_id=TID, merchant_id=MID, txn_type="sale", mti="0200", processing_code="000000",
                amount=1000 + stan, stan=stan, batch=7, pan=PAN, card_org="CUP", payment_method="chip",
                state="sent", **kw)


async def test_the_sale_path_commits_through_statement_batches(tmp_path: Path, twin: str) -> None:
    j = await Journal.open(str(tmp_path / "j.db"), KEY, group_commit_ms=2.0)
    try:
        writer = j.store.writer
        before = writer.statement_batches
        ids = await asyncio.gather(*(j.record_soon(sale(i)) for i in range(1, 201)))
        assert sorted(ids) == list(range(ids[0], ids[0] + 200))
        await asyncio.gather(*(j.commit_approval_soon(i, None, f"{i % 1000000:06d}") for i in ids))
        assert writer.statement_batches > before
        assert writer.batch_fallbacks == 0
        rows = {r.id: r for r in await j.rows_between(0, 2e9)}
        assert all(rows[i].state == "approved" and rows[i].auth_code == f"{i % 1000000:06d}" for i in ids)
        assert all(rows[i].amount == 1000 + rows[i].batch * 0 + int(rows[i].stan) for i in ids)
        with pytest.raises(JournalError, match="no transaction with id 999999"):
            await j.commit_approval_soon(999999, None, "000001")
        assert writer.batch_fallbacks == 0  # an UPDATE of a missing id changes nothing: no replay needed
    finally:
        await j.close()


async def _one_batch(writer: SqliteWriter, ops: list[SqlOp]) -> list[Any]:
    """Queue ``ops`` from the loop while the writer thread is held, so that they form one batch."""
    started, gate = threading.Event(), threading.Event()
    writer.submit(lambda c: (started.set(), gate.wait(60)))  # a thread operation: the general path
    assert await asyncio.to_thread(started.wait, 60)
    futures = [writer.queue(op) for op in ops]
    gate.set()
    return list(await asyncio.gather(*futures, return_exceptions=True))


@pytest.fixture
def writer(tmp_path: Path, twin: str) -> Any:
    w = SqliteWriter(str(tmp_path / "w.db"), group_commit_ms=0.0, synchronous="NORMAL", batch_statements=True)
    w.start(lambda c: c.executescript(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, n INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE child (id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id))"))
    yield w
    w.stop()


def _rows(writer: SqliteWriter, table: str = "t") -> list[tuple[Any, ...]]:
    with sqlite3.connect(writer.path) as c:
        return [tuple(r) for r in c.execute(f"SELECT * FROM {table} ORDER BY id")]


async def test_a_failing_statement_sends_its_batch_to_the_general_path(writer: SqliteWriter) -> None:
    ins = "INSERT INTO t(v) VALUES (?)"
    results = await _one_batch(writer, [
        SqlOp(ins, ("a",), SqlOp.LASTROWID),
        SqlOp(ins, ("a",), SqlOp.LASTROWID),  # UNIQUE violated: this one fails alone
        SqlOp("INSERT INTO child(t_id) VALUES (?)", (42,), SqlOp.LASTROWID),  # no t 42: foreign key
        SqlOp(ins, ("b",), SqlOp.LASTROWID),
        SqlOp("UPDATE t SET n=n+1 WHERE v=?", ("a",), SqlOp.CHANGES),
        SqlOp("UPDATE t SET n=n+1 WHERE id=?", (77,), SqlOp.ONE_ROW, "no row 77"),
    ])
    assert results[0] == 1 and results[3] == 2 and results[4] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert isinstance(results[5], JournalError) and str(results[5]) == "no row 77"
    assert writer.batch_fallbacks == 1 and writer.replay_count == 1
    assert _rows(writer) == [(1, "a", 1), (2, "b", 0)]
    assert _rows(writer, "child") == []


async def test_an_operation_that_changed_rows_and_failed_is_undone_alone(writer: SqliteWriter) -> None:
    """ONE_ROW of a statement that changed two rows fails; its change must not stay committed."""
    await _one_batch(writer, [SqlOp("INSERT INTO t(v, n) VALUES (?, ?)", (v, -3)) for v in "ab"])
    fallbacks = writer.batch_fallbacks
    results = await _one_batch(writer, [
        SqlOp("DELETE FROM t WHERE n < ?", (0,), SqlOp.ONE_ROW, "not one row"),
        SqlOp("INSERT INTO t(v) VALUES (?)", ("c",), SqlOp.LASTROWID),
    ])
    assert isinstance(results[0], JournalError) and results[1] == 3
    assert writer.batch_fallbacks == fallbacks + 1
    assert _rows(writer) == [(1, "a", -3), (2, "b", -3), (3, "c", 0)]


async def test_a_clean_batch_commits_once_without_a_replay(writer: SqliteWriter) -> None:
    ops = [SqlOp("INSERT INTO t(v) VALUES (?)", (f"v{i}",), SqlOp.LASTROWID) for i in range(50)]
    ops.append(SqlOp("UPDATE t SET n=7 WHERE id=?", (3,), SqlOp.ONE_ROW))
    ops.append(SqlOp("SELECT count(*) FROM t", ()))  # rows are read and dropped
    commits, batches = writer.commit_count, writer.statement_batches
    results = await _one_batch(writer, ops)
    assert results == [*range(1, 51), None, None]
    assert writer.statement_batches == batches + 1
    assert writer.commit_count == commits + 2  # the holding operation's and this batch's
    assert writer.batch_fallbacks == 0 and writer.replay_count == 0
    assert _rows(writer)[2] == (3, "v2", 7)


_values = st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=20),
                    st.floats(allow_nan=False), st.binary(max_size=20))
#: (sql, params, want): LASTROWID only of an INSERT (the writer has two connections, and SQLite's
#: last_insert_rowid() belongs to a connection); ONE_ROW of a DELETE may change many rows (undone)
_op = st.one_of(
    st.tuples(st.just("INSERT INTO t(v, n) VALUES (?, ?)"),
              st.tuples(st.one_of(st.none(), st.sampled_from("abcdef")), st.integers(-5, 5)),
              st.sampled_from([SqlOp.LASTROWID, SqlOp.CHANGES, SqlOp.NOTHING])),
    st.tuples(st.just("UPDATE t SET n=? WHERE v=?"), st.tuples(_values, st.sampled_from("abcdefg")),
              st.sampled_from([SqlOp.CHANGES, SqlOp.ONE_ROW])),
    st.tuples(st.just("DELETE FROM t WHERE n < ?"), st.tuples(st.integers(-6, 0)),
              st.sampled_from([SqlOp.CHANGES, SqlOp.ONE_ROW])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_op, min_size=1, max_size=12), min_size=1, max_size=4))
def test_statement_batches_give_what_each_operation_gives_alone(tmp_path_factory: pytest.TempPathFactory,
                                                               twin: str, batches: Any) -> None:
    """Differential: the writer's outcomes and rows equal each SqlOp run alone, in order, on sqlite3
    (failing ones undone), whatever the batch takes: one statement batch or the general path."""
    d = tmp_path_factory.mktemp("diff")
    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, n NOT NULL DEFAULT 0)"
    ref = sqlite3.connect(str(d / "ref.db"), isolation_level=None)
    ref.execute(schema)
    w = SqliteWriter(str(d / "w.db"), group_commit_ms=0.0, synchronous="OFF", batch_statements=True)
    w.start(lambda c: c.execute(schema))
    try:
        for batch in batches:
            ops = [SqlOp(sql, params, want) for sql, params, want in batch]
            expected: list[Any] = []
            for op in ops:
                ref.execute("SAVEPOINT op")
                try:
                    expected.append(op(ref))
                    ref.execute("RELEASE op")
                except (sqlite3.Error, JournalError) as exc:
                    ref.execute("ROLLBACK TO op")
                    ref.execute("RELEASE op")
                    expected.append(type(exc))
            got = asyncio.run(_one_batch(w, ops))
            assert [type(g) if isinstance(g, BaseException) else g for g in got] == expected
        assert _rows(w) == [tuple(r) for r in ref.execute("SELECT * FROM t ORDER BY id")]
    finally:
        w.stop()
        ref.close()


def test_the_selector_gives_the_writer_a_batch_connection() -> None:
    sqlbatch = importlib.import_module("_fastcore.sqlbatch")
    assert js.BatchConnection is sqlbatch.BatchConnection


async def test_the_journal_threads_carry_their_names_in_the_os(tmp_path: Path) -> None:
    """``top -H`` and the load bench's per-thread split read /proc/PID/task/*/comm."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("thread names through prctl are Linux only")
    j = await Journal.open(str(tmp_path / "n.db"), KEY)
    try:
        await j.record_soon(sale(1))
        reader = await j.store.reader.run(lambda c: threading.get_native_id())

        def comm(native_id: int | None) -> str:
            with open(f"/proc/self/task/{native_id}/comm") as f:
                return f.read().strip()

        writer = j.store.writer
        assert comm(writer._thread.native_id) == "journal-writer"
        assert comm(writer.checkpointer._thread.native_id) == "journal-ckpt"
        assert comm(reader) == "journal-reader_"  # "journal-reader_0", cut to 15 bytes
    finally:
        await j.close()
