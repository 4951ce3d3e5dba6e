"""WAL checkpoints off the writing connection (switch.sqlite_wal): the journal and the issuer ledger."""

from __future__ import annotations

import os
import sqlite3
import time

from issuer_sim.ledger import Ledger
from switch.journal_sqlite import SqliteWriter, connect
from switch.sqlite_wal import WalCheckpointer


def _writer_db(path: str, ck: WalCheckpointer) -> sqlite3.Connection:
    conn = connect(path, "NORMAL")
    ck.prepare_writer(conn)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    return conn


def _write(conn: sqlite3.Connection, rows: int, ck: WalCheckpointer | None = None) -> None:
    blob = os.urandom(900)
    for _ in range(rows):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(v) VALUES (?)", (blob,))
        conn.execute("COMMIT")
        if ck is not None:
            ck.after_commit(conn)


def test_writer_connection_never_checkpoints_and_the_thread_does(tmp_path):
    path = str(tmp_path / "j.db")
    ck = WalCheckpointer(path, interval=0.01)
    conn = _writer_db(path, ck)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    _write(conn, 3000)  # ~3 MB of WAL: SQLite alone would have checkpointed inside a COMMIT by now
    assert os.path.getsize(path + "-wal") > 3000 * 900
    assert os.path.getsize(path) < 64 << 10  # the database file still holds only the schema
    ck.start()
    try:
        deadline = time.monotonic() + 10
        while ck.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ck.checkpoints >= 1
        assert os.path.getsize(path) >= 3000 * 900  # the thread copied the pages back
        rounds, wakeups = ck.checkpoints, ck.rounds
        time.sleep(1.2)
        assert ck.checkpoints == rounds  # nothing new written: no checkpoint, one stat per round
        assert ck.rounds - wakeups < 12  # and the rounds space out (every 10 ms it would be ~120)
        _write(conn, 1)
        deadline = time.monotonic() + 10
        while ck.checkpoints == rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ck.checkpoints >= rounds + 1  # (a round may catch the write half done and come back)
    finally:
        ck.stop()
        conn.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 3001


def test_wal_stays_bounded_under_continuous_writes(tmp_path):
    """A writer that never pauses leaves the thread no moment to catch up with: ``after_commit`` lets
    the WAL start over anyway; without it the WAL grows by tens of MB in two seconds."""
    sizes = {}
    for with_hook in (True, False):
        path = str(tmp_path / f"j{with_hook}.db")
        ck = WalCheckpointer(path, interval=0.005, wal_limit=256 << 10)
        conn = _writer_db(path, ck)
        ck.start()
        biggest = 0
        try:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                _write(conn, 50, ck if with_hook else None)
                biggest = max(biggest, os.path.getsize(path + "-wal"))
        finally:
            ck.stop()
            conn.close()
        assert ck.checkpoints > 0
        sizes[with_hook] = (biggest, ck.writer_checkpoints)
    bounded, writer_checkpoints = sizes[True]
    assert writer_checkpoints > 0
    assert bounded < 16 << 20, sizes  # wal_limit is 256 KB; a writer checkpoint may find the thread busy
    assert sizes[False][0] > 2 * bounded, sizes  # the hook is what bounds it


def test_journal_writer_runs_its_checkpoints_in_the_background(tmp_path):
    path = str(tmp_path / "journal.db")
    writer = SqliteWriter(path, group_commit_ms=0.0, background_checkpoints=True)
    writer.start(lambda c: c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
    try:
        assert writer.checkpointer is not None
        assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        blob = os.urandom(900)
        for _ in range(200):
            writer.submit(lambda c: c.execute("INSERT INTO t(v) VALUES (?)", (blob,))).result()
        deadline = time.monotonic() + 10
        while writer.checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.checkpointer.checkpoints > 0
    finally:
        writer.stop()
    assert not writer.checkpointer._thread.is_alive()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 200


def test_issuer_ledger_checkpoints_in_the_background(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    try:
        assert led._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert led._checkpointer is not None and led._checkpointer._thread.is_alive()
    finally:
        led.close()
    assert not led._checkpointer._thread.is_alive()
    mem = Ledger(":memory:")  # no WAL, no thread
    assert mem._checkpointer is None
    mem.close()


def test_checkpointer_of_a_ledger_never_closed_ends_with_it(tmp_path):
    import gc

    led = Ledger(tmp_path / "ledger.db")
    thread = led._checkpointer._thread
    assert thread.is_alive()
    del led
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
