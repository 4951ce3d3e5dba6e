"""Journal indexes (schema version 7): every query the switch runs on ``txn`` is answered through an index.

The statements are not retyped here: they are captured (SQL and bound parameters) while the real journal
code runs them, then ``EXPLAIN QUERY PLAN`` is asked for exactly those, on a fresh database and on a
version 5 or 6 database (written by the journal with migrations 1-5 or 1-6 only) migrated in place.  The
set of indexes after migration is checked too: each one is B-tree work and WAL pages for every sale.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import switch.journal_sqlite as journal_sqlite
import switch.reconcile as reconcile
import switch.terminals as terminals
from switch import admin
from switch.journal import IN_FLIGHT_STATES, Journal
from switch.journal_sqlite import JOURNAL_MIGRATIONS, SqliteJournalStore

KEY = bytes(range(32))
PAN, OTHER_PAN = "6212345678901234567", "6222000011112222"
MID = "898310048140001"
TIDS = ("00000001", "00000002", "00000003")

#: the newest journal schema version
VERSION = 7
#: the indexes of ``txn`` from schema version 7 on: name -> (columns, partial).  No txn_term_rrn
#: (terminal_id, merchant_id, rrn) any more: find_by_rrn seeks txn_rrn, our RRNs being unique
V7_INDEXES = {
    "txn_trace": (["terminal_id", "merchant_id", "batch", "stan"], False),
    "txn_rrn": (["rrn"], False),
    "txn_pan_hash": (["pan_hash"], False),
    "txn_original": (["original_id"], True),
    "txn_in_flight": (["state"], True),
    "txn_created": (["created_at"], False),
}
#: the index names of ``txn`` written by older versions of the journal
OLD_INDEX_NAMES = {
    5: {"txn_trace", "txn_term_rrn", "txn_rrn", "txn_batch", "txn_pan_hash", "txn_original", "txn_in_flight",
        "txn_created"},
    6: {"txn_trace", "txn_term_rrn", "txn_rrn", "txn_pan_hash", "txn_original", "txn_in_flight", "txn_created"},
}


class Recorder:
    """A connection that notes every statement on ``txn`` (SQL, parameters) and passes it on."""

    def __init__(self, conn: Any, log: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._conn, self._log = conn, log

    def execute(self, sql: str, params: Any = ()) -> Any:
        if " txn" in sql and "INSERT INTO" not in sql:
            self._log.append((sql, tuple(params)))
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def record_store(store: SqliteJournalStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement ``store`` runs from now on, through its reader and writer connections."""
    log: list[tuple[str, tuple[Any, ...]]] = []

    def wrap(method: Callable[[Callable[[Any], Any]], Any]) -> Callable[[Callable[[Any], Any]], Any]:
        return lambda fn: method(lambda c: fn(Recorder(c, log)))

    monkeypatch.setattr(store.reader, "run", wrap(store.reader.run))
    monkeypatch.setattr(store.reader, "call", wrap(store.reader.call))
    monkeypatch.setattr(store.writer, "queue", wrap(store.writer.queue))  # writer.run goes through queue
    monkeypatch.setattr(store.writer, "submit", wrap(store.writer.submit))
    return log


def plan(path: str, sql: str, params: tuple[Any, ...]) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


def index_names(path: str) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='txn' AND sql IS NOT NULL")}
    finally:
        conn.close()


def sale(tid: str, batch: int, stan: int, **kw: Any) -> dict[str, Any]:
    base = dict(terminal_id=tid, merchant_id=MID, txn_type="sale", mti="0200", processing_code="000000",
                state="sent", amount=1000, stan=stan, batch=batch, pan=PAN, card_org="CUP", issuer="cup")
    base.update(kw)
    return base


async def populate(j: Journal) -> dict[str, Any]:
    """Sales on three terminals in two batches, one still in flight, a refund, a pre-auth and its completion."""
    ids: dict[str, Any] = {}
    for tid in TIDS:
        for batch in (7, 8):
            for stan in range(1, 6):
                txn_id = await j.record(sale(tid, batch, stan + 10 * batch))
                await j.commit_approval(txn_id, j.next_rrn(), "A00001")
    ids["sale"] = await j.record(sale(TIDS[0], 8, 900, amount=5000, pan=OTHER_PAN))
    ids["rrn"] = j.next_rrn()
    await j.commit_approval(ids["sale"], ids["rrn"], "A00002")
    refund = await j.record(sale(TIDS[0], 8, 901, txn_type="refund", mti="0220", amount=1200,
                                 original_id=ids["sale"], pan=OTHER_PAN))
    await j.commit_approval(refund, j.next_rrn(), "A00003")
    ids["preauth"] = await j.record(sale(TIDS[1], 8, 902, txn_type="preauth", mti="0100", amount=3000))
    await j.commit_approval(ids["preauth"], j.next_rrn(), "A00004")
    completion = await j.record(sale(TIDS[1], 8, 903, txn_type="completion", amount=2500,
                                     original_id=ids["preauth"]))
    await j.commit_approval(completion, j.next_rrn(), "A00005")
    ids["in_flight"] = await j.record(sale(TIDS[2], 8, 904, rrn=j.next_rrn()))
    return ids


#: operation -> what its plan must name (the index and, for the hot lookups, the columns it seeks on)
EXPECTED = {
    "find_by_trace": "USING INDEX txn_trace (terminal_id=? AND merchant_id=? AND batch=? AND stan=?)",
    "find_by_rrn": "USING INDEX txn_rrn (rrn=?)",
    "find_by_rrn_other_terminal": "USING INDEX txn_rrn (rrn=?)",
    "find_by_pan": "USING INDEX txn_pan_hash (pan_hash=?)",
    "get": "USING INTEGER PRIMARY KEY (rowid=?)",
    "commit_approval": "USING INTEGER PRIMARY KEY (rowid=?)",
    "refunded_total": "USING INDEX txn_original (original_id=?)",
    "child_total": "USING INDEX txn_original (original_id=?)",
    "batch_totals": "USING INDEX txn_trace (terminal_id=? AND merchant_id=? AND batch=?)",
    "mark_settled": "USING INDEX txn_trace (terminal_id=? AND merchant_id=? AND batch=?)",
    "in_flight": "USING INDEX txn_in_flight (state=?)",
    "rows_between": "USING INDEX txn_created (created_at>? AND created_at<?)",
    "rows_between_merchant": "USING INDEX txn_created (created_at>? AND created_at<?)",
    "max_rrn_with_prefix": "SEARCH txn USING COVERING INDEX txn_rrn",
    "reconcile": "USING INDEX txn_created (created_at>? AND created_at<?)",
    "reconcile_issuer": "USING INDEX txn_created (created_at>? AND created_at<?)",
    "admin_txns_rrn": "USING INDEX txn_rrn (rrn=?)",
    "admin_txns_rrn_terminal": "USING INDEX txn_rrn (rrn=?)",
    "admin_txns_batch": "USING INDEX txn_trace (terminal_id=? AND merchant_id=? AND batch=?)",
}
#: lookups on the path of a request: answered in index order, no sort
NO_SORT = {"find_by_trace", "find_by_rrn", "find_by_rrn_other_terminal", "find_by_pan", "get", "commit_approval"}


async def run_queries(path: str, j: Journal, ids: dict[str, Any],
                      monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """Run every query of the journal (and of reconcile and the admin CLI); the statements of each."""
    assert isinstance(j.store, SqliteJournalStore)
    log = record_store(j.store, monkeypatch)
    ro_log: list[tuple[str, tuple[Any, ...]]] = []
    open_ro = reconcile._open_ro
    monkeypatch.setattr(reconcile, "_open_ro", lambda p, what: Recorder(open_ro(p, what), ro_log))
    connect = terminals.connect
    monkeypatch.setattr(terminals, "connect", lambda p: Recorder(connect(p), ro_log))
    start, end = time.time() - 3600, time.time() + 3600
    prefix = ids["rrn"][:4]
    calls: dict[str, Callable[[], Any]] = {
        "find_by_trace": lambda: j.find_by_trace(TIDS[0], MID, 8, 900, "02"),
        "find_by_rrn": lambda: j.find_by_rrn(TIDS[0], MID, ids["rrn"]),
        "find_by_rrn_other_terminal": lambda: j.find_by_rrn(TIDS[1], MID, ids["rrn"]),
        "find_by_pan": lambda: j.find_by_pan(OTHER_PAN),
        "get": lambda: j.get(ids["sale"]),
        "commit_approval": lambda: j.commit_approval(ids["in_flight"], j.next_rrn(), "A00006"),
        "refunded_total": lambda: j.refunded_total(ids["sale"]),
        "child_total": lambda: j.child_total(ids["preauth"], ("completion", "completion_advice")),
        "batch_totals": lambda: j.batch_totals(TIDS[0], MID, 8),
        "mark_settled": lambda: j.mark_settled(TIDS[1], MID, 7),
        "in_flight": lambda: j.in_flight(),
        "rows_between": lambda: j.rows_between(start, end),
        "rows_between_merchant": lambda: j.rows_between(start, end, MID),
        "max_rrn_with_prefix": lambda: j.store.max_rrn_with_prefix(prefix),
        "reconcile": lambda: reconcile.read_journal(path, start, end),
        "reconcile_issuer": lambda: reconcile.read_journal(path, start, end, issuer="cup"),
        "admin_txns_rrn": lambda: admin.run(admin.build_parser().parse_args(
            ["--db", path, "txns", "--rrn", ids["rrn"]])),
        "admin_txns_rrn_terminal": lambda: admin.run(admin.build_parser().parse_args(
            ["--db", path, "txns", "--rrn", ids["rrn"], "--terminal", TIDS[0], "--merchant", MID])),
        "admin_txns_batch": lambda: admin.run(admin.build_parser().parse_args(
            ["--db", path, "txns", "--terminal", TIDS[0], "--merchant", MID, "--batch", "8"])),
    }
    results: dict[str, Any] = {}
    statements: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for name, call in calls.items():
        del log[:], ro_log[:]
        result = call()
        results[name] = await result if hasattr(result, "__await__") else result
        statements[name] = [*log, *ro_log]
    # the queries answered (so they ran, and ran against rows written before a migration too)
    assert results["find_by_trace"].id == ids["sale"]
    assert results["find_by_rrn"].id == ids["sale"]
    assert results["find_by_rrn_other_terminal"] is None  # the RRN is TIDS[0]'s: filtered on the row
    assert [r.id for r in results["find_by_pan"]][-1] == ids["sale"]
    assert results["refunded_total"] == 1200
    assert results["child_total"] == 2500
    assert results["batch_totals"].domestic.debit_count == 6  # 5 sales + the 5000 one; the refund is a credit
    assert results["mark_settled"] == 5
    assert results["in_flight"] == []  # approved by "commit_approval" above
    assert results["max_rrn_with_prefix"] is not None and results["max_rrn_with_prefix"] >= ids["rrn"]
    assert ids["rrn"] in results["admin_txns_rrn"]
    assert ids["rrn"] in results["admin_txns_rrn_terminal"]
    return statements


def assert_indexed(path: str, statements: dict[str, list[tuple[str, tuple[Any, ...]]]]) -> None:
    assert set(statements) == set(EXPECTED)
    for name, stmts in statements.items():
        assert stmts, f"{name}: no statement on txn was seen"
        for sql, params in stmts:
            if sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
                continue
            details = plan(path, sql, params)
            assert not [d for d in details if d.startswith("SCAN txn")], (name, sql, details)
            assert any(EXPECTED[name] in d for d in details), (name, sql, details)
            if name in NO_SORT:
                assert not [d for d in details if "TEMP B-TREE" in d], (name, sql, details)


def assert_v7_indexes(path: str) -> None:
    assert index_names(path) == set(V7_INDEXES)
    conn = sqlite3.connect(path)
    try:
        partial = {r[1]: bool(r[4]) for r in conn.execute("PRAGMA index_list(txn)")}
        for name, (columns, is_partial) in V7_INDEXES.items():
            assert [r[2] for r in conn.execute(f"PRAGMA index_info({name})")] == columns, name
            assert partial[name] is is_partial, name
        original_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='txn_original'").fetchone()[0]
        assert "WHERE original_id IS NOT NULL" in original_sql
        assert conn.execute("SELECT version FROM schema_version WHERE component='journal'").fetchone()[0] == VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_every_query_uses_an_index_on_a_fresh_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "fresh.db")
    j = await Journal.open(path, KEY, group_commit_ms=0.0)
    try:
        assert_v7_indexes(path)
        ids = await populate(j)
        assert_indexed(path, await run_queries(path, j, ids, monkeypatch))
    finally:
        await j.close()


@pytest.mark.parametrize("old_version", sorted(OLD_INDEX_NAMES))
async def test_an_older_journal_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_version: int
) -> None:
    path = str(tmp_path / f"v{old_version}.db")
    with monkeypatch.context() as m:  # the journal as it was: migrations 1..old_version only
        m.setattr(journal_sqlite, "JOURNAL_MIGRATIONS", [mig for mig in JOURNAL_MIGRATIONS if mig[0] <= old_version])
        old = await Journal.open(path, KEY, group_commit_ms=0.0)
        try:
            ids = await populate(old)
        finally:
            await old.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version WHERE component='journal'").fetchone()[0] == old_version
        rows_before = conn.execute("SELECT * FROM txn ORDER BY id").fetchall()
    finally:
        conn.close()
    assert index_names(path) == OLD_INDEX_NAMES[old_version]
    assert len(rows_before) == 35

    j = await Journal.open(path, KEY, group_commit_ms=0.0)  # migrates to the newest version
    try:
        assert_v7_indexes(path)
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT * FROM txn ORDER BY id").fetchall() == rows_before
        finally:
            conn.close()
        # the in-flight row written under the old version is found through the (rebuilt) partial index
        assert [r.id for r in await j.in_flight()] == [ids["in_flight"]]
        assert_indexed(path, await run_queries(path, j, ids, monkeypatch))
    finally:
        await j.close()
    j = await Journal.open(path, KEY, group_commit_ms=0.0)  # opening again changes nothing
    await j.close()
    assert_v7_indexes(path)


async def test_start_up_scans_read_an_index_not_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_trace_keys reads every key by design (the duplicate filter): from a covering index."""
    path = str(tmp_path / "scan.db")
    j = await Journal.open(path, KEY, group_commit_ms=0.0)
    try:
        await populate(j)
        assert isinstance(j.store, SqliteJournalStore)
        log = record_store(j.store, monkeypatch)
        keys: list[tuple[str, str, str]] = []
        j.store.scan_trace_keys(lambda *k: keys.append(k))
        assert len(keys) == 35 and len(log) == 1
        details = plan(path, *log[0])
        assert details == ["SCAN txn USING COVERING INDEX txn_trace"], details
    finally:
        await j.close()


def test_the_in_flight_index_matches_the_in_flight_states() -> None:
    """txn_in_flight is partial on the in-flight states: the query must name exactly those."""
    stmt = next(s for v, stmts in JOURNAL_MIGRATIONS for s in stmts if "txn_in_flight" in s)
    assert stmt.endswith("WHERE state IN (" + ",".join(f"'{s}'" for s in sorted(IN_FLIGHT_STATES)) + ")")
