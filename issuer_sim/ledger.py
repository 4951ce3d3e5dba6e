"""The issuer's ledger: account balances, holds and postings in SQLite.

Every posting carries its upstream key (terminal 41, STAN 11, RRN 37, MTI) so that
``posswitch reconcile`` can compare it with the switch's journal. Postings are idempotent:

* a retransmitted request (same MTI, 41, 11, 37) replays the stored response and posts nothing;
* a reversal undoes the matching posting exactly once (a second reversal is acknowledged, no change);
  an unknown original is answered ``25``.

The ledger never stores a PAN (accounts are keyed by :func:`issuer_sim.accounts.account_id_for`),
a track, or a PIN block. One connection, used from the event-loop thread only.

Group commit: writes made while an event loop runs join one open transaction (``BEGIN IMMEDIATE``,
each write in its own ``SAVEPOINT`` so a failing one undoes only itself) that is committed by a
callback at the next loop turn: one ``COMMIT`` per batch instead of one per write.  Whoever answers
from the ledger's state must ``await ledger.committed()`` first (the issuer's and the wallets' hosts
do), so nothing is answered before it is durable; a failed ``COMMIT`` rolls the batch back and fails
its waiters.  Without a running loop every write commits at once, as before.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from switch.logsafe import mask_pan
from switch.sqlite_wal import WalCheckpointer

from .accounts import Account, account_id_for

__all__ = ["Ledger", "Posting", "DEBIT", "CREDIT", "HOLD", "RELEASE", "REVERSAL"]

DEBIT, CREDIT, HOLD, RELEASE, REVERSAL = "debit", "credit", "hold", "release", "reversal"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id  TEXT PRIMARY KEY,
    pan_masked  TEXT NOT NULL,
    balance     INTEGER NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,
    pin_fails   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS postings (
    id            INTEGER PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(account_id),
    kind          TEXT NOT NULL,
    amount        INTEGER NOT NULL,      -- signed effect on balance (hold/release: on held)
    terminal_id   TEXT NOT NULL,
    merchant_id   TEXT NOT NULL,
    stan          TEXT NOT NULL,
    rrn           TEXT NOT NULL,
    mti           TEXT NOT NULL,
    proc          TEXT NOT NULL,
    auth_code     TEXT NOT NULL DEFAULT '',
    business_date TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    reverses      INTEGER REFERENCES postings(id),
    reversed_by   INTEGER REFERENCES postings(id)
);
CREATE INDEX IF NOT EXISTS postings_key ON postings(terminal_id, stan, rrn);
CREATE INDEX IF NOT EXISTS postings_account ON postings(account_id, business_date);
CREATE TABLE IF NOT EXISTS responses (
    mti         TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    stan        TEXT NOT NULL,
    rrn         TEXT NOT NULL,
    response    TEXT NOT NULL,           -- JSON, without PAN/track/PIN fields
    PRIMARY KEY (mti, terminal_id, stan, rrn)
) WITHOUT ROWID;
"""

_NO_STORE = ("2", "35", "36", "52", "55")
#: what a stored response leaves out: a response's 55 is issuer data (tag 91, scripts), kept for replay
_NOT_IN_STORED_RESPONSE = frozenset(_NO_STORE) - {"55"}

log = logging.getLogger("posswitch.issuer")
_running_loop = asyncio._get_running_loop  # the C accessor: None outside a running loop, no exception


@dataclass(frozen=True, slots=True)
class Posting:
    id: int
    account_id: str
    kind: str
    amount: int
    terminal_id: str
    merchant_id: str
    stan: str
    rrn: str
    mti: str
    proc: str
    auth_code: str
    business_date: str
    created_at: str
    reverses: int | None
    reversed_by: int | None


_now_cache: list = [-1, ""]  # [UTC milliseconds since the epoch, their ISO text]


def _now() -> str:
    """UTC now as ISO text with milliseconds (``created_at``), formatted once per millisecond."""
    ms = time.time_ns() // 1_000_000
    if ms != _now_cache[0]:
        _now_cache[0] = ms
        _now_cache[1] = _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="milliseconds")
    return _now_cache[1]  # type: ignore[no-any-return]


_day_cache: list = [0.0, ""]  # [monotonic time until which the cached day holds, the day]


def _today() -> str:
    """Today's (local) date as ISO text, recomputed at most once a second."""
    now = time.monotonic()
    if now >= _day_cache[0]:
        _day_cache[0], _day_cache[1] = now + 1.0, _dt.date.today().isoformat()
    return _day_cache[1]  # type: ignore[no-any-return]


class Ledger:
    """SQLite-backed ledger (``path`` may be ``":memory:"``)."""

    def __init__(self, path: str | Path = ":memory:", *, group_commit: bool = True) -> None:
        self.path = str(path)
        self.group_commit = group_commit
        self._depth = 0              # nesting of _tx() blocks
        self._batch = False          # a group-commit transaction is open, its COMMIT is scheduled
        self._batch_loop: asyncio.AbstractEventLoop | None = None  # ... on this loop
        self._waiter: asyncio.Future[None] | None = None  # resolved by that COMMIT (made on demand)
        self._checkpointer: WalCheckpointer | None = None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # checkpoints on a thread of their own: never inside a COMMIT on the event loop
            self._checkpointer = WalCheckpointer(self.path, name="ledger-checkpoint", owner=self)
            self._checkpointer.prepare_writer(self._db)
            self._checkpointer.start()
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        if self._batch:
            self._commit_batch()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()

    # -------------------------------------------------------------- group commit
    def committed(self) -> asyncio.Future[None] | _Done:
        """Await it before answering from the ledger: done once every write made so far is committed."""
        if not self._batch:
            return _DONE
        if self._waiter is None:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            if loop is not self._batch_loop:  # the loop that was to commit it ended first: commit now
                waiter = self._waiter
                self._commit_batch()
                return waiter
        return self._waiter

    def _open_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._batch, self._batch_loop = True, loop
        loop.call_soon(self._commit_batch)

    def _commit_batch(self) -> None:
        if not self._batch:  # already committed (close)
            return
        self._batch = False
        waiter, self._waiter = self._waiter, None
        try:
            self._db.execute("COMMIT")
            if self._checkpointer is not None:
                self._checkpointer.after_commit(self._db)
        except Exception as exc:  # the batch is lost: nobody may answer from it
            log.error("ledger_commit_failed", exc_info=True)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -------------------------------------------------------------- accounts
    def ensure_accounts(self, accounts: list[Account] | tuple[Account, ...]) -> None:
        """Create ledger rows at the opening balance; existing rows (a restart) keep their state."""
        with self._tx():
            self._db.executemany(
                "INSERT OR IGNORE INTO accounts(account_id, pan_masked, balance) VALUES (?, ?, ?)",
                [(a.account_id, mask_pan(a.pan), a.balance) for a in accounts])

    def _row(self, pan_or_id: str) -> sqlite3.Row:
        aid = pan_or_id if pan_or_id.startswith("A") else account_id_for(pan_or_id)
        row = self._db.execute("SELECT * FROM accounts WHERE account_id = ?", (aid,)).fetchone()
        if row is None:
            raise KeyError(f"no ledger account {mask_pan(pan_or_id) if pan_or_id.isdigit() else aid}")
        return row

    def balance(self, pan_or_id: str) -> int:
        """Ledger balance in fen (holds not subtracted)."""
        return int(self._row(pan_or_id)["balance"])

    def held(self, pan_or_id: str) -> int:
        return int(self._row(pan_or_id)["held"])

    def available(self, pan_or_id: str) -> int:
        row = self._row(pan_or_id)
        return int(row["balance"]) - int(row["held"])

    def pin_fails(self, pan_or_id: str) -> int:
        return int(self._row(pan_or_id)["pin_fails"])

    def record_pin_result(self, account_id: str, ok: bool) -> int:
        """Reset (good PIN) or increment (bad PIN) the consecutive-failure count; returns it."""
        if ok:
            self._write1("UPDATE accounts SET pin_fails = 0 WHERE account_id = ? AND pin_fails != 0", (account_id,))
            return 0
        self._write1("UPDATE accounts SET pin_fails = pin_fails + 1 WHERE account_id = ?", (account_id,))
        return self.pin_fails(account_id)

    def daily_spent(self, account_id: str, business_date: str | None = None) -> int:
        """Debits plus holds of the day that are not reversed (fen, positive)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(CASE kind WHEN 'debit' THEN -amount WHEN 'hold' THEN amount END), 0) "
            "FROM postings WHERE account_id = ? AND business_date = ? AND reversed_by IS NULL "
            "AND kind IN ('debit', 'hold')",
            (account_id, business_date or _today())).fetchone()
        return int(row[0])

    # -------------------------------------------------------------- postings
    def postings(self, pan_or_id: str | None = None) -> list[Posting]:
        if pan_or_id is None:
            rows = self._db.execute("SELECT * FROM postings ORDER BY id").fetchall()
        else:
            aid = pan_or_id if pan_or_id.startswith("A") else account_id_for(pan_or_id)
            rows = self._db.execute("SELECT * FROM postings WHERE account_id = ? ORDER BY id",
                                    (aid,)).fetchall()
        return [Posting(**dict(r)) for r in rows]

    def post(self, account_id: str, kind: str, amount: int, *, msg: dict[str, str],
             auth_code: str = "", release_auth: str | None = None) -> int:
        """Post one movement for request ``msg``. ``amount`` is positive; its sign follows ``kind``.

        ``release_auth``: also release the open hold with that authorisation code (completion).
        """
        if amount < 0:
            raise ValueError("amount must be >= 0")
        signed = {DEBIT: -amount, CREDIT: amount, HOLD: amount, RELEASE: -amount}[kind]
        now = _now()
        with self._tx():
            if release_auth:
                self._release_hold(account_id, release_auth, msg, now)
            cur = self._db.execute(
                "INSERT INTO postings(account_id, kind, amount, terminal_id, merchant_id, stan, rrn, mti, "
                "proc, auth_code, business_date, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (account_id, kind, signed, msg.get("41", ""), msg.get("42", ""), msg.get("11", ""),
                 msg.get("37", ""), msg.get("t", ""), msg.get("3", ""), auth_code, _today(), now))
            self._apply(account_id, kind, signed)
            return int(cur.lastrowid or 0)

    def release(self, account_id: str, auth_code: str, *, msg: dict[str, str]) -> int:
        """Release the open hold with ``auth_code`` (pre-auth void); returns the amount released (0: none)."""
        now = _now()
        with self._tx():
            return self._release_hold(account_id, auth_code, msg, now)

    def _apply(self, account_id: str, kind: str, signed: int) -> None:
        column = "held" if kind in (HOLD, RELEASE) else "balance"
        self._db.execute(f"UPDATE accounts SET {column} = {column} + ? WHERE account_id = ?",
                         (signed, account_id))

    def _release_hold(self, account_id: str, auth_code: str, msg: dict[str, str], now: str) -> int:
        hold = self._db.execute(
            "SELECT id, amount FROM postings WHERE account_id = ? AND kind = 'hold' AND auth_code = ? "
            "AND reversed_by IS NULL ORDER BY id LIMIT 1", (account_id, auth_code)).fetchone()
        if hold is None:
            return 0
        cur = self._db.execute(
            "INSERT INTO postings(account_id, kind, amount, terminal_id, merchant_id, stan, rrn, mti, proc, "
            "auth_code, business_date, created_at, reverses) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (account_id, RELEASE, -hold["amount"], msg.get("41", ""), msg.get("42", ""), msg.get("11", ""),
             msg.get("37", ""), msg.get("t", ""), msg.get("3", ""), auth_code, _today(), now, hold["id"]))
        self._db.execute("UPDATE postings SET reversed_by = ? WHERE id = ?", (cur.lastrowid, hold["id"]))
        self._apply(account_id, RELEASE, -hold["amount"])
        return int(hold["amount"])

    def reverse(self, terminal_id: str, stan: str, rrn: str, *, msg: dict[str, str]) -> tuple[str, int | None]:
        """Undo the posting made for (41, original STAN, 37) exactly once.

        Returns ``("00", posting id)`` when it reversed something now, ``("00", None)`` when it was
        already reversed, ``("25", None)`` when no such original exists.
        """
        now = _now()
        with self._tx():
            rows = self._db.execute(
                "SELECT * FROM postings WHERE terminal_id = ? AND stan = ? AND rrn = ? AND kind != 'reversal' "
                "ORDER BY id", (terminal_id, stan, rrn)).fetchall()
            if not rows and rrn:  # original rebuilt from the switch journal: match on 41 + 37 only
                rows = self._db.execute(
                    "SELECT * FROM postings WHERE terminal_id = ? AND rrn = ? AND kind != 'reversal' "
                    "AND stan = (SELECT stan FROM postings WHERE terminal_id = ? AND rrn = ? "
                    "AND kind != 'reversal' ORDER BY id DESC LIMIT 1) ORDER BY id",
                    (terminal_id, rrn, terminal_id, rrn)).fetchall()
            if not rows:
                return "25", None
            open_rows = [r for r in rows if r["reversed_by"] is None]
            last = None
            for r in open_rows:
                cur = self._db.execute(
                    "INSERT INTO postings(account_id, kind, amount, terminal_id, merchant_id, stan, rrn, mti, "
                    "proc, auth_code, business_date, created_at, reverses) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (r["account_id"], REVERSAL, -r["amount"], msg.get("41", ""), msg.get("42", ""),
                     msg.get("11", ""), msg.get("37", ""), msg.get("t", ""), msg.get("3", ""),
                     r["auth_code"], _today(), now, r["id"]))
                last = int(cur.lastrowid or 0)
                self._db.execute("UPDATE postings SET reversed_by = ? WHERE id = ?", (last, r["id"]))
                self._apply(r["account_id"], r["kind"], -r["amount"])
            return "00", last

    # -------------------------------------------------------------- duplicate detection
    def stored_response(self, msg: dict[str, str]) -> dict[str, str] | None:
        if not self._batch and not self._depth and self.group_commit:
            loop = _running_loop()
            if loop is not None:  # the requests of this turn look up in one transaction, not one each
                self._open_batch(loop)
        row = self._db.execute(
            "SELECT response FROM responses WHERE mti = ? AND terminal_id = ? AND stan = ? AND rrn = ?",
            (msg.get("t", ""), msg.get("41", ""), msg.get("11", ""), msg.get("37", ""))).fetchone()
        if row is None:
            return None
        resp: dict[str, str] = json.loads(row[0])
        for f in ("2",):
            if f in msg:
                resp[f] = msg[f]
        return resp

    def store_response(self, msg: dict[str, str], resp: dict[str, str]) -> None:
        doc = {k: v for k, v in resp.items() if k not in _NOT_IN_STORED_RESPONSE}
        self._write1(
            "INSERT OR REPLACE INTO responses(mti, terminal_id, stan, rrn, response) VALUES (?,?,?,?,?)",
            (msg.get("t", ""), msg.get("41", ""), msg.get("11", ""), msg.get("37", ""), json.dumps(doc)))

    # -------------------------------------------------------------- transactions
    def _tx(self) -> _Tx:
        return _Tx(self)

    def _write1(self, sql: str, params: tuple[object, ...]) -> None:
        """One write statement (atomic on its own: no savepoint needed) in the current transaction,
        the group-commit batch (opened here if need be), or on its own outside an event loop."""
        if not self._batch and not self._depth:
            loop = _running_loop() if self.group_commit else None
            if loop is not None:
                self._open_batch(loop)
        self._db.execute(sql, params)


class _Done:
    """An already-finished awaitable (nothing to wait for): no future, no loop turn."""

    __slots__ = ()

    def __await__(self):  # type: ignore[no-untyped-def]
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()


class _Tx:
    """One atomic group of writes; nested use joins the outer one.

    In a running event loop (group commit): ``SAVEPOINT`` .. ``RELEASE`` (``ROLLBACK TO`` on error)
    inside the batch transaction, which is opened here and committed at the next loop turn.  Else
    ``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` on error).
    """

    __slots__ = ("_l",)

    def __init__(self, ledger: Ledger) -> None:
        self._l = ledger

    def __enter__(self) -> _Tx:
        led = self._l
        if led._depth == 0:
            db = led._db
            if not led._batch:
                loop = _running_loop() if led.group_commit else None
                if loop is not None:
                    led._open_batch(loop)
                else:
                    db.execute("BEGIN IMMEDIATE")
            if led._batch:
                db.execute("SAVEPOINT tx")
        led._depth += 1
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        led = self._l
        led._depth -= 1
        if led._depth:
            return
        db = led._db
        if led._batch:
            if exc_type:
                db.execute("ROLLBACK TO tx")
            db.execute("RELEASE tx")
        else:
            db.execute("ROLLBACK" if exc_type else "COMMIT")
