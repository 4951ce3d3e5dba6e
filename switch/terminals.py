"""Merchant and terminal registry: who may transact, with which keys, MAC profile and batch.

Static attributes per terminal: terminal id (41), merchant id (42), the TMK under the LMK (the clear TMK
only ever exists inside the HSM), status (``active`` / ``disabled``), MAC algorithm profile
(``pos-ecb`` UnionPay ECB MAC, ``x9.19``, ``x9.9``) and sign-on key mode (60.3 ``001`` / ``003`` / ``004``).
Runtime state: working keys under the LMK (PIK/TPK, MAK/TAK, TDK), signed-on flag, batch number and the
"must sign on again" flag that the flows turn into header digit 6 = ``3``.

Everything lives in the journal's SQLite database (tables ``merchant`` and ``terminal``).
:class:`TerminalStore` is the plain synchronous store (used by ``posswitch terminals``);
:class:`TerminalRegistry` is what the running switch uses: lookups come from memory, updates change
memory at once and are persisted by a background writer thread, so the event loop never waits on
fsync.  Changes made with the CLI while the switch runs are picked up by
:meth:`TerminalRegistry.refresh_if_changed`, which :meth:`TerminalRegistry.get` calls at most once per
``refresh_interval`` (1 s): ``posswitch terminals disable`` takes effect on a running switch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from switch.journal_sqlite import SqliteWriter, connect, migrate
from switch.logsafe import kv

log = logging.getLogger("switch.terminals")

ACTIVE = "active"
DISABLED = "disabled"
STATUSES = (ACTIVE, DISABLED)
KEY_MODES = ("001", "003", "004")
MAC_ALGORITHMS = ("pos-ecb", "x9.19", "x9.9")

_TID = re.compile(r"^[\x20-\x7e]{8}$")
_MID = re.compile(r"^[\x20-\x7e]{15}$")
_KEY_UNDER_LMK = re.compile(r"^[UTXYZ]?[0-9A-Fa-f]{16,48}$")

REGISTRY_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS merchant (
                merchant_id TEXT PRIMARY KEY,
                name TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','disabled')),
                fee_profile TEXT NOT NULL DEFAULT 'default',
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS terminal (
                terminal_id TEXT NOT NULL,
                merchant_id TEXT NOT NULL REFERENCES merchant(merchant_id),
                status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','disabled')),
                tmk_under_lmk TEXT NOT NULL,
                key_mode TEXT NOT NULL DEFAULT '003',
                mac_algorithm TEXT NOT NULL DEFAULT 'pos-ecb',
                batch INTEGER NOT NULL DEFAULT 1,
                pik_under_lmk TEXT,
                mak_under_lmk TEXT,
                tdk_under_lmk TEXT,
                signed_on INTEGER NOT NULL DEFAULT 0,
                resign_required INTEGER NOT NULL DEFAULT 0,
                last_signon_at REAL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (terminal_id, merchant_id)
            )""",
            "CREATE INDEX IF NOT EXISTS terminal_merchant ON terminal(merchant_id)",
        ],
    ),
    (
        2,
        [
            # bumped by every administrative change (CLI, provisioning), not by runtime state saves, so
            # a running switch reloads only when an operator changed something
            "CREATE TABLE IF NOT EXISTS registry_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " version INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO registry_version(id, version) VALUES (1, 0)",
        ],
    ),
]


class RegistryError(Exception):
    """Invalid registry input or an unknown merchant/terminal; the message names the field."""


@dataclass(slots=True)
class Merchant:
    merchant_id: str
    name: str = ""
    status: str = ACTIVE
    fee_profile: str = "default"


@dataclass(slots=True)
class Terminal:
    """A terminal as the flows see it (attribute names agreed with switch-core)."""

    tid: str
    mid: str
    tmk_under_lmk: str
    status: str = ACTIVE
    merchant_status: str = ACTIVE
    key_mode: str = "003"
    mac_algorithm: str = "pos-ecb"
    batch: int = 1
    pik_under_lmk: str | None = None
    mak_under_lmk: str | None = None
    tdk_under_lmk: str | None = None
    signed_on: bool = False
    resign_required: bool = False
    last_signon_at: float | None = None

    @property
    def active(self) -> bool:
        """May transact: terminal and merchant both active."""
        return self.status == ACTIVE and self.merchant_status == ACTIVE

    @property
    def header_digit6(self) -> str:
        """Processing-request digit for reply headers: ``3`` = sign on again, else ``0``."""
        return "3" if self.resign_required else "0"


def validate_terminal(
    tid: str, mid: str, tmk_under_lmk: str, key_mode: str = "003", mac_algorithm: str = "pos-ecb",
    status: str = ACTIVE,
) -> None:
    if not _TID.match(tid):
        raise RegistryError(f"terminal_id: expected 8 printable characters, got {tid!r}")
    if not _MID.match(mid):
        raise RegistryError(f"merchant_id: expected 15 printable characters, got {mid!r}")
    if not _KEY_UNDER_LMK.match(tmk_under_lmk):
        raise RegistryError("tmk_under_lmk: expected a key under LMK (optional scheme letter + 16/32/48 hex)")
    if key_mode not in KEY_MODES:
        raise RegistryError(f"key_mode: expected one of {', '.join(KEY_MODES)}, got {key_mode!r}")
    if mac_algorithm not in MAC_ALGORITHMS:
        raise RegistryError(f"mac_algorithm: expected one of {', '.join(MAC_ALGORITHMS)}, got {mac_algorithm!r}")
    if status not in STATUSES:
        raise RegistryError(f"status: expected active or disabled, got {status!r}")


def _validate_mid(mid: str) -> None:
    if not _MID.match(mid):
        raise RegistryError(f"merchant_id: expected 15 printable characters, got {mid!r}")


_TERMINAL_SELECT = """
    SELECT t.terminal_id, t.merchant_id, t.tmk_under_lmk, t.status, m.status AS merchant_status, t.key_mode,
           t.mac_algorithm, t.batch, t.pik_under_lmk, t.mak_under_lmk, t.tdk_under_lmk, t.signed_on,
           t.resign_required, t.last_signon_at
    FROM terminal t JOIN merchant m ON m.merchant_id = t.merchant_id"""


def _row_to_terminal(r: sqlite3.Row) -> Terminal:
    return Terminal(
        tid=r["terminal_id"], mid=r["merchant_id"], tmk_under_lmk=r["tmk_under_lmk"], status=r["status"],
        merchant_status=r["merchant_status"], key_mode=r["key_mode"], mac_algorithm=r["mac_algorithm"],
        batch=int(r["batch"]), pik_under_lmk=r["pik_under_lmk"], mak_under_lmk=r["mak_under_lmk"],
        tdk_under_lmk=r["tdk_under_lmk"], signed_on=bool(r["signed_on"]),
        resign_required=bool(r["resign_required"]), last_signon_at=r["last_signon_at"],
    )


# -- SQL operations shared by the sync store and the background writer ------------------------------------

def _sql_add_merchant(c: sqlite3.Connection, m: Merchant, update: bool) -> None:
    now = time.time()
    if update:
        c.execute(
            "INSERT INTO merchant(merchant_id, name, status, fee_profile, created_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(merchant_id) DO UPDATE SET name=excluded.name, fee_profile=excluded.fee_profile",
            (m.merchant_id, m.name, m.status, m.fee_profile, now),
        )
    else:
        try:
            c.execute(
                "INSERT INTO merchant(merchant_id, name, status, fee_profile, created_at) VALUES (?,?,?,?,?)",
                (m.merchant_id, m.name, m.status, m.fee_profile, now),
            )
        except sqlite3.IntegrityError as exc:
            raise RegistryError(f"merchant_id: {m.merchant_id!r} already exists") from exc


def _sql_add_terminal(c: sqlite3.Connection, t: Terminal, update: bool) -> None:
    if c.execute("SELECT 1 FROM merchant WHERE merchant_id=?", (t.mid,)).fetchone() is None:
        raise RegistryError(f"merchant_id: unknown merchant {t.mid!r} (add it first)")
    now = time.time()
    params = (t.tid, t.mid, t.status, t.tmk_under_lmk, t.key_mode, t.mac_algorithm, t.batch, now, now)
    sql = (
        "INSERT INTO terminal(terminal_id, merchant_id, status, tmk_under_lmk, key_mode, mac_algorithm, batch,"
        " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
    )
    if update:
        sql += (
            " ON CONFLICT(terminal_id, merchant_id) DO UPDATE SET key_mode=excluded.key_mode,"
            " mac_algorithm=excluded.mac_algorithm, updated_at=excluded.updated_at,"
            " resign_required=CASE WHEN tmk_under_lmk != excluded.tmk_under_lmk THEN 1 ELSE resign_required END,"
            " tmk_under_lmk=excluded.tmk_under_lmk"
        )
    try:
        c.execute(sql, params)
    except sqlite3.IntegrityError as exc:
        raise RegistryError(f"terminal_id: {t.tid!r} already exists for merchant {t.mid!r}") from exc


def _sql_save_runtime(c: sqlite3.Connection, t: Terminal) -> None:
    c.execute(
        "UPDATE terminal SET batch=?, pik_under_lmk=?, mak_under_lmk=?, tdk_under_lmk=?, signed_on=?,"
        " resign_required=?, last_signon_at=?, updated_at=? WHERE terminal_id=? AND merchant_id=?",
        (t.batch, t.pik_under_lmk, t.mak_under_lmk, t.tdk_under_lmk, int(t.signed_on), int(t.resign_required),
         t.last_signon_at, time.time(), t.tid, t.mid),
    )


class TerminalStore:
    """Synchronous access to the registry tables (CLI, provisioning, start-up)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.conn = connect(self.path)
        migrate(self.conn, "registry", REGISTRY_MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    def version(self) -> int:
        """Administrative change counter (see ``registry_version``)."""
        return int(self.conn.execute("SELECT version FROM registry_version WHERE id = 1").fetchone()[0])

    def _tx(self, fn: Any, *args: Any) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn, *args)
            self.conn.execute("UPDATE registry_version SET version = version + 1 WHERE id = 1")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def add_merchant(self, mid: str, name: str = "", fee_profile: str = "default", *, update: bool = False) -> None:
        _validate_mid(mid)
        self._tx(_sql_add_merchant, Merchant(mid, name, ACTIVE, fee_profile), update)

    def add_terminal(
        self, tid: str, mid: str, tmk_under_lmk: str, key_mode: str = "003", mac_algorithm: str = "pos-ecb",
        batch: int = 1, *, update: bool = False,
    ) -> None:
        validate_terminal(tid, mid, tmk_under_lmk, key_mode, mac_algorithm)
        t = Terminal(tid, mid, tmk_under_lmk, key_mode=key_mode, mac_algorithm=mac_algorithm, batch=batch)
        self._tx(_sql_add_terminal, t, update)

    def get(self, tid: str, mid: str) -> Terminal | None:
        r = self.conn.execute(
            _TERMINAL_SELECT + " WHERE t.terminal_id=? AND t.merchant_id=?", (tid, mid)
        ).fetchone()
        return _row_to_terminal(r) if r else None

    def terminals(self, mid: str | None = None) -> list[Terminal]:
        sql, params = _TERMINAL_SELECT, ()
        if mid:
            sql, params = sql + " WHERE t.merchant_id=?", (mid,)
        return [_row_to_terminal(r) for r in self.conn.execute(sql + " ORDER BY t.merchant_id, t.terminal_id", params)]

    def merchants(self) -> list[Merchant]:
        rows = self.conn.execute("SELECT merchant_id, name, status, fee_profile FROM merchant ORDER BY merchant_id")
        return [Merchant(*r) for r in rows]

    def merchant(self, mid: str) -> Merchant | None:
        r = self.conn.execute(
            "SELECT merchant_id, name, status, fee_profile FROM merchant WHERE merchant_id=?", (mid,)
        ).fetchone()
        return Merchant(*r) if r else None

    def set_status(self, tid: str, mid: str, status: str) -> None:
        if status not in STATUSES:
            raise RegistryError(f"status: expected active or disabled, got {status!r}")

        def _set(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE terminal SET status=?, updated_at=? WHERE terminal_id=? AND merchant_id=?",
                (status, time.time(), tid, mid),
            )
            if cur.rowcount != 1:
                raise RegistryError(f"terminal_id: unknown terminal {tid!r} of merchant {mid!r}")

        self._tx(_set)

    def set_merchant_status(self, mid: str, status: str) -> None:
        if status not in STATUSES:
            raise RegistryError(f"status: expected active or disabled, got {status!r}")

        def _set(c: sqlite3.Connection) -> None:
            if c.execute("UPDATE merchant SET status=? WHERE merchant_id=?", (status, mid)).rowcount != 1:
                raise RegistryError(f"merchant_id: unknown merchant {mid!r}")

        self._tx(_set)

    def rotate_keys(self, tid: str, mid: str, new_tmk_under_lmk: str | None = None) -> None:
        """Drop the working keys and flag the terminal: its next reply carries header digit 6 = ``3``."""
        if new_tmk_under_lmk is not None and not _KEY_UNDER_LMK.match(new_tmk_under_lmk):
            raise RegistryError("tmk_under_lmk: expected a key under LMK (optional scheme letter + 16/32/48 hex)")

        def _rotate(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE terminal SET pik_under_lmk=NULL, mak_under_lmk=NULL, tdk_under_lmk=NULL, signed_on=0,"
                " resign_required=1, tmk_under_lmk=COALESCE(?, tmk_under_lmk), updated_at=?"
                " WHERE terminal_id=? AND merchant_id=?",
                (new_tmk_under_lmk, time.time(), tid, mid),
            )
            if cur.rowcount != 1:
                raise RegistryError(f"terminal_id: unknown terminal {tid!r} of merchant {mid!r}")

        self._tx(_rotate)

    def load_from_config(self, merchants: Iterable[Any], terminals: Iterable[Any]) -> None:
        """Upsert configured merchants/terminals.  Runtime state and CLI-set status are left alone."""
        for m in merchants:
            self.add_merchant(m.merchant_id, m.name, getattr(m, "fee_profile", "default"), update=True)
        for t in terminals:
            self.add_terminal(t.terminal_id, t.merchant_id, t.tmk_under_lmk, t.key_mode, t.mac_algorithm, update=True)


class TerminalRegistry:
    """In-memory view of the registry for the event loop, persisted in the background."""

    def __init__(self, path: str, refresh_interval: float = 1.0) -> None:
        self.path = str(path)
        self.refresh_interval = refresh_interval
        self._next_check = 0.0
        self._store = TerminalStore(self.path)  # migrations, start-up loads, reloads
        self._writer = SqliteWriter(self.path, group_commit_ms=0.0, name="registry-writer")
        self._writer.start()
        self._terminals: dict[tuple[str, str], Terminal] = {}
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._version = -1
        self.reload()

    @classmethod
    def open(cls, path: str, refresh_interval: float = 1.0) -> TerminalRegistry:
        """``refresh_interval``: at most this often, :meth:`get` checks for CLI changes (0 = every call)."""
        return cls(path, refresh_interval)

    def close(self) -> None:
        self._writer.stop()
        self._store.close()

    @property
    def store(self) -> TerminalStore:
        return self._store

    # -- reads ------------------------------------------------------------------------------------------
    def get(self, tid: str, mid: str) -> Terminal | None:
        """The terminal from memory; picks up CLI changes at most ``refresh_interval`` seconds late."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.refresh_interval
            self.refresh_if_changed()
        return self._terminals.get((tid, mid))

    def all(self) -> list[Terminal]:
        return list(self._terminals.values())

    def reload(self) -> None:
        """Re-read every terminal from the database."""
        self._version = self._store.version()
        self._terminals = {(t.tid, t.mid): t for t in self._store.terminals()}

    def refresh_if_changed(self) -> bool:
        """Reload when an administrative change (the CLI) was committed since the last load.

        One indexed read of ``registry_version`` on this thread (no fsync, no thread hop); runtime saves
        (sign-on keys, batch numbers) and journal writes to the same file do not trigger a reload.
        """
        if self._pending:
            return False  # our own writes are in flight: the next call will see them committed
        if self._store.version() == self._version:
            return False
        self.reload()
        return True

    # -- updates (memory now, disk in the background) -------------------------------------------------
    def _persist(self, t: Terminal) -> None:
        snapshot = dataclasses.replace(t)
        fut = self._writer.submit(lambda c: _sql_save_runtime(c, snapshot))
        self._pending.add(fut)

        def _done(f: concurrent.futures.Future[Any]) -> None:
            self._pending.discard(f)
            if f.exception() is not None:
                log.error("registry write failed", extra=kv(tid=t.tid, error=str(f.exception())))

        fut.add_done_callback(_done)

    def _require(self, tid: str, mid: str) -> Terminal:
        t = self._terminals.get((tid, mid))
        if t is None:
            raise RegistryError(f"terminal_id: unknown terminal {tid!r} of merchant {mid!r}")
        return t

    def set_working_keys(self, tid: str, mid: str, pik: str, mak: str, tdk: str | None = None) -> None:
        """After a successful sign-on: new keys under LMK, signed on, re-sign-on flag cleared."""
        t = self._require(tid, mid)
        t.pik_under_lmk, t.mak_under_lmk, t.tdk_under_lmk = pik, mak, tdk
        t.signed_on, t.resign_required, t.last_signon_at = True, False, time.time()
        self._persist(t)

    def set_batch(self, tid: str, mid: str, batch: int) -> None:
        t = self._require(tid, mid)
        t.batch = int(batch)
        self._persist(t)

    def require_resign(self, tid: str, mid: str) -> None:
        """Force a new sign-on (e.g. after a MAC failure or key rotation): header digit 6 = ``3``."""
        t = self._require(tid, mid)
        t.resign_required = True
        self._persist(t)

    def sign_off(self, tid: str, mid: str) -> None:
        t = self._require(tid, mid)
        t.signed_on = False
        self._persist(t)

    # -- provisioning (synchronous, for start-up and tests) -------------------------------------------
    def add_merchant(self, mid: str, name: str = "", fee_profile: str = "default") -> None:
        before = self._store.version()
        self._store.add_merchant(mid, name, fee_profile, update=True)
        self._own_changes(before, 1)

    def add(
        self, tid: str, mid: str, tmk_under_lmk: str, key_mode: str = "003", mac_algorithm: str = "pos-ecb",
        batch: int = 1,
    ) -> Terminal:
        """Provision a terminal (its merchant is created when missing); returns the cached Terminal."""
        before, bumps = self._store.version(), 1
        if self._store.merchant(mid) is None:
            self._store.add_merchant(mid, update=True)
            bumps += 1
        self._store.add_terminal(tid, mid, tmk_under_lmk, key_mode, mac_algorithm, batch, update=True)
        t = self._store.get(tid, mid)
        assert t is not None
        self._terminals[(tid, mid)] = t
        self._own_changes(before, bumps)
        return t

    def _own_changes(self, before: int, bumps: int) -> None:
        """Our provisioning bumped the version: no reload needed unless someone else changed it too."""
        if self._version == before and self._store.version() == before + bumps:
            self._version = before + bumps

    async def flush(self) -> None:
        """Wait until every background write is committed."""
        if self._pending:
            futures = [asyncio.shield(asyncio.wrap_future(f)) for f in list(self._pending)]
            await asyncio.gather(*futures, return_exceptions=True)
