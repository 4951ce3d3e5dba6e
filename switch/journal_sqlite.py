"""SQLite storage for the journal: WAL mode, one writer thread with group commit, one reader thread.

:class:`SqliteWriter` owns the only writing connection.  Callers enqueue a function ``fn(conn)``; the
thread takes everything queued, runs the batch inside one ``BEGIN IMMEDIATE`` … ``COMMIT`` and only then
resolves every waiting future (one ``call_soon_threadsafe`` per event loop per commit).  ``group_commit_ms``
is how long the thread keeps collecting more once it has work, but only while work keeps coming: the
first write after an idle spell is committed at once.  While one commit is being fsynced, the next batch
accumulates, so under load the number of commits stays far below the number of writes.  The operations
of a batch run back to back; if one raises, the transaction is rolled back and the batch replayed with a
SAVEPOINT per operation, so one failing operation does not sink the others (operations must therefore
only act on the connection: one may run twice, the first run undone).  Reads use a separate connection
on their own thread: WAL lets them run beside the writer.

An operation may also be a :class:`SqlOp` (one parameterised statement and what to return of it): a
batch made only of those, as every batch of the sale path is, runs through :mod:`_fastcore.sqlbatch`,
which executes ``BEGIN``, the statements and ``COMMIT`` (with its fsync) in one call without the GIL.
With the ``sqlite3`` module the writer thread took the GIL back after every statement, and beside a
busy event loop each of those waits is a hand-off between the two threads.  If that batch fails, it is
run again on the general path, which gives every operation its own outcome.

Migrations are idempotent: ``schema_version(component, version)`` records what each component
(``journal``, ``registry``) has applied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from _fastcore.sqlbatch import BatchConnection
from switch.journal import (
    APPROVED,
    COLUMNS,
    CREDIT_TYPES,
    DEBIT_TYPES,
    IN_FLIGHT_STATES,
    REFUNDED,
    REVERSED,
    SETTLED,
    VOIDED,
    BatchTotals,
    JournalError,
    SideTotals,
    TxnRecord,
)
from switch.logsafe import kv
from switch.sqlite_wal import WalCheckpointer
from switch.threadnames import name_os_thread

log = logging.getLogger("switch.journal")

_STOP = object()

#: (version, statements) per component; append new versions, never edit applied ones
JOURNAL_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS txn (
                id INTEGER PRIMARY KEY,
                terminal_id TEXT NOT NULL,
                merchant_id TEXT NOT NULL,
                txn_type TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN
                    ('received','sent','approved','declined','reversed','voided','refunded','settled')),
                amount INTEGER NOT NULL DEFAULT 0,
                currency TEXT NOT NULL DEFAULT '156',
                mti TEXT NOT NULL DEFAULT '',
                processing_code TEXT NOT NULL DEFAULT '',
                pan_masked TEXT NOT NULL DEFAULT '',
                pan_hash TEXT NOT NULL DEFAULT '',
                stan TEXT NOT NULL DEFAULT '',
                batch INTEGER NOT NULL DEFAULT 0,
                rrn TEXT NOT NULL DEFAULT '',
                auth_code TEXT NOT NULL DEFAULT '',
                response_code TEXT NOT NULL DEFAULT '',
                card_org TEXT NOT NULL DEFAULT '',
                payment_method TEXT NOT NULL DEFAULT '',
                entry_mode TEXT NOT NULL DEFAULT '',
                issuer TEXT NOT NULL DEFAULT '',
                original_id INTEGER REFERENCES txn(id),
                qr_order_no TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                approved_at REAL,
                settled_at REAL
            )""",
            "CREATE INDEX IF NOT EXISTS txn_trace ON txn(terminal_id, merchant_id, stan, batch)",
            "CREATE INDEX IF NOT EXISTS txn_term_rrn ON txn(terminal_id, merchant_id, rrn)",
            "CREATE INDEX IF NOT EXISTS txn_rrn ON txn(rrn)",
            "CREATE INDEX IF NOT EXISTS txn_batch ON txn(terminal_id, merchant_id, batch)",
            "CREATE INDEX IF NOT EXISTS txn_pan_hash ON txn(pan_hash)",
            "CREATE INDEX IF NOT EXISTS txn_original ON txn(original_id)",
            "CREATE INDEX IF NOT EXISTS txn_in_flight ON txn(state) WHERE state IN ('received','sent')",
            "CREATE INDEX IF NOT EXISTS txn_created ON txn(created_at)",
        ],
    ),
    (
        2,
        [
            # debit / credit card (for merchant fee rates) when routing or the issuer tells us; '' = unknown
            "ALTER TABLE txn ADD COLUMN card_type TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        3,
        [
            # the issuer-side reference of the upstream original (e.g. "stan|field7"), for 0420 / field 90
            "ALTER TABLE txn ADD COLUMN upstream_ref TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        4,
        [
            # pending upstream reversals (switch.journal_reversals): field 2 only sealed, erased on ack
            """CREATE TABLE IF NOT EXISTS reversal_queue (
                id INTEGER PRIMARY KEY,
                link TEXT NOT NULL,
                message TEXT NOT NULL,
                pan_sealed BLOB,
                pan_masked TEXT NOT NULL DEFAULT '',
                rrn TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL,
                acked_at REAL,
                response_code TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX IF NOT EXISTS reversal_pending ON reversal_queue(link, id) WHERE acked_at IS NULL",
        ],
    ),
    (
        5,
        [
            # durable RRN high-water mark per day prefix (switch.journal.RrnGenerator)
            "CREATE TABLE IF NOT EXISTS rrn_block (prefix TEXT PRIMARY KEY, high_water INTEGER NOT NULL)",
        ],
    ),
    (
        6,
        [
            # fewer indexes to maintain per sale (each one is B-tree work and WAL pages per commit).
            # txn_rrn stays: max_rrn_with_prefix (start-up and the first RRN of each day, on the event
            # loop) seeks it (a digit-only LIKE prefix is indexable) instead of scanning all rows, and
            # `posswitch terminals txns --rrn` uses it.
            # - txn_batch folded into txn_trace: lookups by trace give all four columns; batch totals and
            #   mark_settled use its (terminal_id, merchant_id, batch) prefix
            "DROP INDEX IF EXISTS txn_batch",
            "DROP INDEX IF EXISTS txn_trace",
            "CREATE INDEX IF NOT EXISTS txn_trace ON txn(terminal_id, merchant_id, batch, stan)",
            # - txn_original only holds rows that point at an original (sales do not); `original_id = ?`
            #   implies IS NOT NULL, so the refund / completion totals still use it
            "DROP INDEX IF EXISTS txn_original",
            "CREATE INDEX IF NOT EXISTS txn_original ON txn(original_id) WHERE original_id IS NOT NULL",
        ],
    ),
    (
        7,
        [
            # txn_term_rrn (terminal_id, merchant_id, rrn) is redundant: every sale's INSERT added an entry
            # to it (one more B-tree leaf page in the WAL per commit; with many terminals each sale lands on
            # a different page).  The switch's RRNs are unique within a journal (RrnGenerator), so
            # find_by_rrn seeks txn_rrn (rrn) and checks terminal and merchant on the row or few it finds.
            "DROP INDEX IF EXISTS txn_term_rrn",
        ],
    ),
]


def connect(path: str, synchronous: str = "FULL", readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN/COMMIT), WAL, foreign keys, busy timeout."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path != ":memory:":
            raise JournalError(f"journal: cannot switch {path} to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[tuple[int, list[str]]]) -> int:
    """Apply the missing migrations of ``component`` in one transaction; returns the resulting version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = conn.execute("SELECT version FROM schema_version WHERE component=?", (component,)).fetchone()
        current = row[0] if row else 0
        for version, statements in migrations:
            if version <= current:
                continue
            for stmt in statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_version(component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
                (component, version),
            )
            current = version
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


class SqlOp:
    """One statement for :class:`SqliteWriter` and what its future resolves to: ``want`` is
    :attr:`NOTHING` (None), :attr:`LASTROWID`, :attr:`CHANGES` (rows changed) or :attr:`ONE_ROW` (None
    when exactly one row changed, else ``JournalError(missing)``: an UPDATE of an id that is not there).

    A batch of these alone runs without the GIL (:mod:`_fastcore.sqlbatch`); ``op(conn)`` runs it on a
    ``sqlite3`` connection with the same result, which is how mixed batches and replays run it.
    """

    __slots__ = ("sql", "params", "want", "missing")
    NOTHING, LASTROWID, CHANGES, ONE_ROW = range(4)

    def __init__(self, sql: str, params: tuple[Any, ...], want: int = 0, missing: str = "") -> None:
        self.sql = sql
        self.params = params
        self.want = want
        self.missing = missing

    def result(self, lastrowid: int, changes: int) -> Any:
        want = self.want
        if want == SqlOp.LASTROWID:
            return lastrowid
        if want == SqlOp.ONE_ROW:
            if changes != 1:
                raise JournalError(self.missing or f"journal: {changes} rows changed, expected 1")
            return None
        return changes if want == SqlOp.CHANGES else None

    def __call__(self, conn: sqlite3.Connection) -> Any:
        cur = conn.execute(self.sql, self.params)
        return self.result(cur.lastrowid or 0, cur.rowcount)


class SqliteWriter:
    """The single writing connection of one database, on its own thread, with group commit.

    An operation ``fn(conn)`` must only act on ``conn``: if another operation of its batch fails, the
    batch is rolled back and run again (see :meth:`_execute`).  ``batch_statements``: run batches made
    only of :class:`SqlOp` (from the event loop) on a second connection of :mod:`_fastcore.sqlbatch`,
    without the GIL.
    """

    def __init__(
        self,
        path: str,
        *,
        group_commit_ms: float = 1.0,
        max_batch: int = 512,
        synchronous: str = "FULL",
        on_commit: Callable[[int, float], None] | None = None,
        name: str = "journal-writer",
        background_checkpoints: bool = False,
        batch_statements: bool = False,
    ) -> None:
        self.path = path
        #: WAL checkpoints on a thread of their own (:mod:`switch.sqlite_wal`) instead of inside a COMMIT
        self.checkpointer = (WalCheckpointer(path, name=name.removesuffix("-writer") + "-ckpt", owner=self)
                             if background_checkpoints and path != ":memory:" else None)
        self.window = max(0.0, group_commit_ms) / 1000.0
        self.max_batch = max_batch
        self.synchronous = synchronous
        self.on_commit = on_commit
        self.commit_count = 0
        self.op_count = 0
        self.replay_count = 0  # batches that had a failing operation (run again with savepoints)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._batch_statements = batch_statements and path != ":memory:"
        self._batch: Any = None  # the _fastcore.sqlbatch connection of SqlOp batches (opened in start)
        self.statement_batches = 0  # batches committed through _fastcore.sqlbatch
        self.batch_fallbacks = 0  # SqlOp batches that failed there and ran again on the general path
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the last queue() call

    def start(self, init: Callable[[sqlite3.Connection], Any] | None = None) -> None:
        """Open the connection (and run ``init``, e.g. migrations) synchronously, then start the thread."""
        self._conn = connect(self.path, self.synchronous)
        if self.checkpointer is not None:
            self.checkpointer.prepare_writer(self._conn)
        if init is not None:
            init(self._conn)
        if self._batch_statements:  # opened after init: the schema is migrated by then
            pragmas = self.checkpointer.writer_pragmas() if self.checkpointer is not None else ()
            self._batch = BatchConnection(self.path, synchronous=self.synchronous, pragmas=pragmas)
        self._started = True
        self._thread.start()
        if self.checkpointer is not None:
            self.checkpointer.start()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Queue ``fn(conn)`` from any thread; the future resolves after the COMMIT that includes it."""
        if not self._started:
            raise JournalError("journal: store is not started")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, fut, None))
        return fut

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Queue ``fn(conn)`` from the event loop and await the commit.

        Results are handed back with one ``call_soon_threadsafe`` per commit (not one per write).
        Cancelling the caller does not cancel the write: once handed to the journal, a record of what
        happened (e.g. an issuer approval) is kept even if the terminal connection waiting for it went.
        """
        return await self.queue(fn)

    def queue(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        """:meth:`run` without the ``await``: the write is queued now; the future resolves after its COMMIT."""
        if not self._started:
            raise JournalError("journal: store is not started")
        loop = self._loop
        if loop is None or not loop.is_running():  # the running loop of this thread, if it is the same
            loop = self._loop = asyncio.get_running_loop()  # (each call costs a getpid() syscall)
        fut: asyncio.Future[Any] = loop.create_future()

        self._queue.put((fn, fut, loop))
        # no shield needed: the thread never looks at an event-loop future before the write, and a
        # cancelled one is skipped when results are handed back (its outcome has no one to go to)
        return fut

    def is_alive(self) -> bool:
        return self._started and self._thread.is_alive()

    def stop(self) -> None:
        """Finish every queued operation, then close the connection."""
        if not self._started:
            return
        self._started = False
        self._queue.put(_STOP)
        self._thread.join()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the thread -------------------------------------------------------------------------------------
    def _collect(self, first: Any, idle: bool) -> tuple[list[Any], bool]:
        """``first`` plus what follows it: everything already queued and, unless the writer was ``idle``
        (``first`` arrived while it was waiting for work), whatever arrives within the window."""
        batch = [first]
        get_nowait = self._queue.get_nowait
        deadline = None if idle else time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                item = get_nowait()
            except queue.Empty:
                if deadline is None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        name_os_thread()
        conn = self._conn
        assert conn is not None
        q = self._queue
        stop = False
        while not stop:
            try:
                first, idle = q.get_nowait(), False  # more work came in during the last commit
            except queue.Empty:
                first, idle = q.get(), True
            if first is _STOP:
                break
            batch, stop = self._collect(first, idle)
            self._execute(conn, batch)

    def _execute(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        """Run ``batch`` in one transaction and resolve its futures after the COMMIT.

        Fast path: the operations run back to back.  If one raises, the whole transaction is rolled back
        and the batch replayed with a SAVEPOINT per operation, so the failing one fails alone and the
        others commit (an operation may therefore run twice; it must only act on ``conn``).
        """
        t0 = time.perf_counter()
        if self._batch is not None:
            outcomes = self._execute_statements(batch)
            if outcomes is not None:
                self._committed(batch, t0, outcomes)
                return
        outcomes = []  # (future, loop, result, error)
        append = outcomes.append
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            try:
                for i, (fn, fut, loop) in enumerate(batch):  # noqa: B007 (i: where a failure stopped us)
                    if loop is None and not fut.set_running_or_notify_cancel():
                        continue  # a thread caller cancelled before the write started: skip it
                    append((fut, loop, fn(conn), None))
            except Exception:
                self.replay_count += 1
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                outcomes = self._replay(conn, batch, i)
            conn.execute("COMMIT")
            if self.checkpointer is not None:
                self.checkpointer.after_commit(conn)
        except Exception as exc:
            log.error("journal commit failed", extra=kv(ops=len(batch), error=str(exc)))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = JournalError(f"journal: commit failed: {exc}")
            failed = []
            for _fn, fut, loop in batch:
                if loop is not None or fut.running():
                    failed.append((fut, loop, None, error))
                elif not fut.done():
                    fut.cancel()
            _deliver(failed)
            return
        self._committed(batch, t0, outcomes)

    def _execute_statements(self, batch: list[Any]) -> list[Any] | None:
        """The batch in one ``_fastcore.sqlbatch`` call (BEGIN, statements, COMMIT without the GIL) when
        every operation is a :class:`SqlOp` from an event loop; None when it is not such a batch, or when
        it failed (rolled back: the general path runs it again and gives each operation its outcome)."""
        for op, _fut, loop in batch:
            if type(op) is not SqlOp or loop is None:  # thread callers may cancel: the general path
                return None
        run = self._batch.run
        try:  # BEGIN and the statements without the GIL; the COMMIT once every result is known to stand
            results = run([op.sql for op, _, _ in batch], [op.params for op, _, _ in batch], commit=False)
        except Exception:
            self.batch_fallbacks += 1
            return None
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        append = outcomes.append
        for (op, fut, loop), (lastrowid, changes) in zip(batch, results, strict=True):
            try:
                append((fut, loop, op.result(lastrowid, changes), None))
            except JournalError as exc:
                if changes:  # it changed rows and failed: only the general path can undo it alone
                    return self._abandon(run)
                append((fut, loop, None, exc))  # it changed nothing (an UPDATE of a missing id)
        try:
            run((), (), begin=None, commit=True)  # the COMMIT and its fsync, without the GIL
        except Exception:
            return self._abandon(run)
        self.statement_batches += 1
        if self.checkpointer is not None:
            self.checkpointer.after_commit(self._conn)  # type: ignore[arg-type]
        return outcomes

    def _abandon(self, run: Callable[..., Any]) -> None:
        """Roll the statement batch's transaction back (the general path runs the batch again)."""
        self.batch_fallbacks += 1
        try:
            run((), (), begin="ROLLBACK", commit=False)
        except Exception:  # (a failed COMMIT may have ended the transaction already)
            pass
        return None

    def _committed(self, batch: list[Any], t0: float, outcomes: list[Any]) -> None:
        """Count the COMMIT, call the commit hook, resolve the futures."""
        elapsed = time.perf_counter() - t0
        self.commit_count += 1
        self.op_count += len(batch)
        if self.on_commit is not None:
            try:
                self.on_commit(len(batch), elapsed)
            except Exception:  # metrics must never break the journal
                log.exception("journal on_commit hook failed")
        _deliver(outcomes)

    @staticmethod
    def _replay(conn: sqlite3.Connection, batch: list[Any], failed_at: int) -> list[Any]:
        """The slow path of :meth:`_execute`: ``batch`` again, one SAVEPOINT per operation.

        Operations up to ``failed_at`` already passed the cancellation check; later ones did not yet.
        """
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        for i, (fn, fut, loop) in enumerate(batch):
            if loop is None and (not fut.running() if i <= failed_at else not fut.set_running_or_notify_cancel()):
                continue  # cancelled before it started
            conn.execute("SAVEPOINT op")
            try:
                result = fn(conn)
            except Exception as exc:  # one bad operation must not sink the group
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((fut, loop, None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((fut, loop, result, None))
        return outcomes


def _resolve(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _deliver(outcomes: list[tuple[Any, Any, Any, BaseException | None]]) -> None:
    """Resolve thread futures directly and event-loop futures with one wake-up per loop."""
    per_loop: dict[Any, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for fut, loop, result, exc in outcomes:
        if loop is None:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        else:
            per_loop.setdefault(loop, []).append((fut, result, exc))
    for loop, items in per_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # that event loop is closed: nobody is waiting any more
            pass


class SqliteReader:
    """A read connection on a one-thread executor, so lookups never block the event loop."""

    def __init__(self, path: str, name: str = "journal-reader") -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                                           initializer=name_os_thread)
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, readonly=True)
            self._conn.execute("PRAGMA query_only=1")
        return self._conn

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` synchronously on the reader thread (for start-up code)."""
        return self._pool.submit(lambda: fn(self._open())).result()

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.wrap_future(self._pool.submit(lambda: fn(self._open())))

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)


_SELECT = "SELECT * FROM txn"


def row_to_record(row: sqlite3.Row | None) -> TxnRecord | None:
    if row is None:
        return None
    return TxnRecord(**{k: row[k] for k in row.keys()})


_INSERT_SQL = f"INSERT INTO txn({','.join(COLUMNS)}) VALUES ({','.join('?' for _ in COLUMNS)})"
_record_values = operator.attrgetter(*COLUMNS)  # a record's values in COLUMNS order
_COLUMN_SET = frozenset(COLUMNS)
#: UPDATE statements per tuple of column names (a handful of call sites, so a handful of entries)
_UPDATE_SQL: dict[tuple[str, ...], str] = {}

_DEBIT_SQL = ",".join(f"'{t}'" for t in sorted(DEBIT_TYPES))
_CREDIT_SQL = ",".join(f"'{t}'" for t in sorted(CREDIT_TYPES))
#: the states as literals, not bound parameters: only then can SQLite see that the query matches the
#: partial index txn_in_flight (with ``state IN (?,?)`` it scans the whole table)
_IN_FLIGHT_STATES_SQL = ",".join(f"'{s}'" for s in sorted(IN_FLIGHT_STATES))
_IN_FLIGHT_SQL = f"{_SELECT} WHERE state IN ({_IN_FLIGHT_STATES_SQL}) ORDER BY id"


class SqliteJournalStore:
    """:class:`switch.journal.JournalStore` on SQLite."""

    def __init__(
        self,
        path: str,
        *,
        group_commit_ms: float = 1.0,
        synchronous: str = "FULL",
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = str(path)
        self.writer = SqliteWriter(
            self.path, group_commit_ms=group_commit_ms, synchronous=synchronous, on_commit=on_commit,
            background_checkpoints=True, batch_statements=True,
        )
        self.reader = SqliteReader(self.path)
        self._started = False

    @property
    def commit_count(self) -> int:
        return self.writer.commit_count

    def set_commit_hook(self, hook: Callable[[int, float], None] | None) -> None:
        self.writer.on_commit = hook

    def is_healthy(self) -> bool:
        return self._started and self.writer.is_alive()

    def wal_bytes(self) -> int:
        """Size of the write-ahead log file (0 when there is none): it stays near or under 4 MB while
        checkpoints keep up (``switch.sqlite_wal``); steady growth means they do not."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    async def start(self) -> None:
        if self._started:
            return
        loop = asyncio.get_running_loop()
        # opening + migrating touches the disk: keep it off the loop too
        await loop.run_in_executor(None, self.writer.start, lambda c: migrate(c, "journal", JOURNAL_MIGRATIONS))
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.stop)
        await loop.run_in_executor(None, self.reader.close)

    # -- writes -----------------------------------------------------------------------------------------
    async def insert(self, rec: TxnRecord) -> int:
        return await self.writer.run(SqlOp(_INSERT_SQL, _record_values(rec), SqlOp.LASTROWID))  # type: ignore[no-any-return]

    def insert_values(self, params: tuple[Any, ...]) -> asyncio.Future[int]:
        """Queue the INSERT of a row given as its values in ``COLUMNS`` order (checked by the journal);
        await the returned future for the new id after its COMMIT."""
        return self.writer.queue(SqlOp(_INSERT_SQL, params, SqlOp.LASTROWID))

    def update(self, txn_id: int, fields: Mapping[str, Any]) -> asyncio.Future[None]:
        """Queue the UPDATE now; await the returned future for its COMMIT."""
        cols = tuple(fields)
        sql = _UPDATE_SQL.get(cols)
        if sql is None:
            if not _COLUMN_SET.issuperset(cols):  # the journal checked them: never text from outside in SQL
                raise JournalError(f"journal: unknown field in {sorted(cols)!r}")
            sql = f"UPDATE txn SET {','.join(f'{k}=?' for k in cols)} WHERE id=?"
            if len(_UPDATE_SQL) < 256:
                _UPDATE_SQL[cols] = sql
        params = (*fields.values(), txn_id)
        return self.writer.queue(SqlOp(sql, params, SqlOp.ONE_ROW, f"journal: no transaction with id {txn_id}"))

    async def mark_settled(self, terminal_id: str, merchant_id: str, batch: int, at: float) -> int:
        sql = (
            "UPDATE txn SET state=?, settled_at=?, updated_at=? WHERE terminal_id=? AND merchant_id=? "
            f"AND batch=? AND state IN (?,?,?) AND txn_type IN ({_DEBIT_SQL},{_CREDIT_SQL})"
        )
        params = (SETTLED, at, at, terminal_id, merchant_id, batch, APPROVED, VOIDED, REFUNDED)
        return await self.writer.run(SqlOp(sql, params, SqlOp.CHANGES))  # type: ignore[no-any-return]

    # -- reads ------------------------------------------------------------------------------------------
    async def _one(self, sql: str, params: Sequence[Any]) -> TxnRecord | None:
        return await self.reader.run(lambda c: row_to_record(c.execute(sql, params).fetchone()))

    async def _many(self, sql: str, params: Sequence[Any]) -> list[TxnRecord]:
        return await self.reader.run(lambda c: [row_to_record(r) for r in c.execute(sql, params).fetchall()])

    async def get(self, txn_id: int) -> TxnRecord | None:
        return await self._one(f"{_SELECT} WHERE id=?", (txn_id,))

    async def find_by_trace(
        self, terminal_id: str, merchant_id: str, batch: int | None, stan: str, mti_class: str | None
    ) -> TxnRecord | None:
        sql = f"{_SELECT} WHERE terminal_id=? AND merchant_id=? AND stan=?"
        params: list[Any] = [terminal_id, merchant_id, stan]
        if batch is not None:
            sql += " AND batch=?"
            params.append(int(batch))
        if mti_class:
            sql += " AND substr(mti, 1, 2)=?"
            params.append(mti_class)
        return await self._one(sql + " ORDER BY id DESC LIMIT 1", params)

    async def find_by_rrn(self, terminal_id: str, merchant_id: str, rrn: str) -> TxnRecord | None:
        # seeks txn_rrn (rrn), newest first in rowid order, no sort; terminal and merchant are checked on
        # the few rows with that RRN (our RRNs are unique in a journal; schema 7 dropped txn_term_rrn)
        sql = f"{_SELECT} WHERE terminal_id=? AND merchant_id=? AND rrn=? ORDER BY id DESC LIMIT 1"
        return await self._one(sql, (terminal_id, merchant_id, rrn))

    async def find_by_pan_hash(self, pan_hash: str, limit: int) -> list[TxnRecord]:
        return await self._many(f"{_SELECT} WHERE pan_hash=? ORDER BY id DESC LIMIT ?", (pan_hash, limit))

    async def refunded_total(self, original_id: int) -> int:
        sql = (
            "SELECT COALESCE(SUM(amount), 0) FROM txn WHERE original_id=? AND txn_type='refund' "
            "AND approved_at IS NOT NULL AND state != ?"
        )
        return await self.reader.run(lambda c: int(c.execute(sql, (original_id, REVERSED)).fetchone()[0]))

    async def child_total(self, original_id: int, txn_types: tuple[str, ...]) -> int:
        marks = ",".join("?" for _ in txn_types)
        sql = (f"SELECT COALESCE(SUM(amount), 0) FROM txn WHERE original_id=? AND txn_type IN ({marks}) "
               "AND approved_at IS NOT NULL AND state != ?")
        params = (original_id, *txn_types, REVERSED)
        return await self.reader.run(lambda c: int(c.execute(sql, params).fetchone()[0]))

    async def batch_totals(self, terminal_id: str, merchant_id: str, batch: int) -> BatchTotals:
        sql = f"""
            SELECT card_org = 'CUP' AS domestic,
                   txn_type IN ({_DEBIT_SQL}) AS debit,
                   COALESCE(SUM(amount), 0), COUNT(*)
            FROM txn
            WHERE terminal_id=? AND merchant_id=? AND batch=? AND approved_at IS NOT NULL AND state != ?
              AND txn_type IN ({_DEBIT_SQL},{_CREDIT_SQL})
            GROUP BY 1, 2"""

        def _totals(c: sqlite3.Connection) -> BatchTotals:
            totals = BatchTotals(SideTotals(), SideTotals())
            for domestic, debit, amount, count in c.execute(sql, (terminal_id, merchant_id, batch, REVERSED)):
                side = totals.domestic if domestic else totals.foreign
                if debit:
                    side.debit_amount, side.debit_count = int(amount), int(count)
                else:
                    side.credit_amount, side.credit_count = int(amount), int(count)
            return totals

        return await self.reader.run(_totals)

    async def in_flight(self) -> list[TxnRecord]:
        return await self._many(_IN_FLIGHT_SQL, ())

    async def rows_between(self, start: float, end: float, merchant_id: str | None) -> list[TxnRecord]:
        sql = f"{_SELECT} WHERE created_at >= ? AND created_at < ?"
        params: list[Any] = [start, end]
        if merchant_id:
            sql += " AND merchant_id=?"
            params.append(merchant_id)
        return await self._many(sql + " ORDER BY id", params)

    def scan_trace_keys(self, add: Callable[[str, str, str], None]) -> None:
        """Feed every (terminal, merchant, STAN) of the journal to ``add`` (blocking; start-up only)."""

        def _scan(c: sqlite3.Connection) -> None:
            for tid, mid, stan in c.execute("SELECT terminal_id, merchant_id, stan FROM txn"):
                add(tid, mid, stan)

        self.reader.call(_scan)

    def max_rrn_with_prefix(self, prefix: str) -> str | None:
        # called once per day by the RRN generator; runs on the reader thread
        sql = "SELECT MAX(rrn) FROM txn WHERE rrn LIKE ? AND length(rrn) = 12"
        return self.reader.call(lambda c: c.execute(sql, (prefix + "%",)).fetchone()[0])

    def rrn_high_water(self, prefix: str) -> int | None:
        sql = "SELECT high_water FROM rrn_block WHERE prefix=?"
        row = self.reader.call(lambda c: c.execute(sql, (prefix,)).fetchone())
        return int(row[0]) if row else None

    def reserve_rrn(self, prefix: str, high_water: int) -> concurrent.futures.Future[Any]:
        """Durably raise the RRN high-water mark of ``prefix`` (never lowers it); resolves after COMMIT."""
        sql = ("INSERT INTO rrn_block(prefix, high_water) VALUES (?, ?) ON CONFLICT(prefix) DO UPDATE "
               "SET high_water=MAX(high_water, excluded.high_water)")
        return self.writer.submit(lambda c: c.execute(sql, (prefix, high_water)))
