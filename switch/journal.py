"""The transaction journal: one row per transaction, durable before the terminal hears "approved".

This module is the public face: the record type (:class:`TxnRecord`), the states, batch totals
(:class:`BatchTotals`) and the :class:`Journal` facade the flows call.  Storage sits behind the small
:class:`JournalStore` protocol; :mod:`switch.journal_sqlite` is the default (SQLite in WAL mode, a writer
thread with group commit) so a PostgreSQL store can follow without touching the flows.

What is stored: amounts, masked PAN plus a keyed hash (HMAC-SHA256) for lookups, RRN, auth code, STAN,
batch, terminal, merchant, payment method, card organisation (63.1) and times.  What is never stored:
clear PAN, track data, PIN blocks, keys.  :meth:`Journal.record` and :meth:`Journal.update_state` refuse
such keys by name.

Every write resolves only after its COMMIT, so ``await journal.commit_approval(...)`` before writing the
0210 guarantees the approval survives a crash.  Writes issued concurrently share one transaction and one
commit (group commit), so durability costs little under load; the event loop never waits on fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import itertools
import operator
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from switch.logsafe import mask_pan

# -- states and transaction types -------------------------------------------------------------------------

RECEIVED = "received"
SENT = "sent"
APPROVED = "approved"
DECLINED = "declined"
REVERSED = "reversed"
VOIDED = "voided"
REFUNDED = "refunded"
SETTLED = "settled"

STATES: frozenset[str] = frozenset({RECEIVED, SENT, APPROVED, DECLINED, REVERSED, VOIDED, REFUNDED, SETTLED})
#: rows that were sent on but have no final outcome yet (crash recovery looks at these)
IN_FLIGHT_STATES: frozenset[str] = frozenset({RECEIVED, SENT})

#: §8: the debit side counts sales (even if voided later), completions (online and advice), offline
#: sale / adjust / tip; the credit side counts voids, refunds and completion voids.
DEBIT_TYPES: frozenset[str] = frozenset({"sale", "completion", "completion_advice", "offline_sale", "adjust"})
CREDIT_TYPES: frozenset[str] = frozenset({"void", "refund", "completion_void"})
OTHER_TYPES: frozenset[str] = frozenset({"balance", "preauth", "preauth_void", "reversal"})
TXN_TYPES: frozenset[str] = DEBIT_TYPES | CREDIT_TYPES | OTHER_TYPES

PAYMENT_METHODS: frozenset[str] = frozenset({"swipe", "chip", "contactless", "qr", "keyed", "fallback", ""})

#: keys that must never reach the journal (checked on every write)
FORBIDDEN_KEYS: frozenset[str] = frozenset(
    {"track2", "track3", "track", "pin", "pin_block", "pinblock", "field35", "field36", "field52", "clear_pan",
     "cvv", "cvc", "key", "pik", "mak", "tdk", "tak", "tpk"}
)


def pan_hash(key: bytes, pan: str) -> str:
    """HMAC-SHA256 of the PAN digits under ``key`` (hex): the journal's lookup hash for a card."""
    return hmac.new(key, pan.strip().encode("ascii"), hashlib.sha256).hexdigest()


class JournalError(Exception):
    """A journal write or lookup failed (bad field, unknown row, storage error)."""


@dataclass(slots=True)
class TxnRecord:
    """One journal row.  ``pan_masked`` / ``pan_hash`` are derived from a clear PAN that is never kept."""

    terminal_id: str
    merchant_id: str
    txn_type: str
    state: str = RECEIVED
    amount: int = 0
    currency: str = "156"
    mti: str = ""
    processing_code: str = ""
    pan_masked: str = ""
    pan_hash: str = ""
    stan: str = ""
    batch: int = 0
    rrn: str = ""
    auth_code: str = ""
    response_code: str = ""
    card_org: str = ""
    card_type: str = ""  # "debit", "credit" or "" (unknown): selects the merchant fee rate
    payment_method: str = ""
    entry_mode: str = ""
    issuer: str = ""
    original_id: int | None = None
    qr_order_no: str = ""
    upstream_ref: str = ""  # issuer-side reference of this transaction (e.g. "stan|field7") for reversals
    created_at: float = 0.0
    updated_at: float = 0.0
    approved_at: float | None = None
    settled_at: float | None = None
    id: int | None = None

    @property
    def domestic(self) -> bool:
        """§8: domestic (内卡) when the reply's 63.1 card organisation was ``CUP``."""
        return self.card_org == "CUP"


#: columns a caller may set (everything but the primary key)
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TxnRecord) if f.name != "id")
_COLUMN_SET = frozenset(COLUMNS)
#: ``_record_values(rec)``: the tuple of a record's column values, in ``COLUMNS`` order
_record_values = operator.attrgetter(*COLUMNS)
#: ``_row_values(row)``: the same tuple from a dict holding every column (:meth:`Journal.record`'s row)
_row_values = operator.itemgetter(*COLUMNS)
#: a new row's values of the columns with a default (``TxnRecord``'s defaults; the others are required)
_ROW_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TxnRecord) if f.name != "id" and f.default is not dataclasses.MISSING
}
assert not {c.lower() for c in COLUMNS} & FORBIDDEN_KEYS


@dataclass(slots=True)
class SideTotals:
    """One half of field 48 in the 0500: debit amount/count and credit amount/count, amounts in fen."""

    debit_amount: int = 0
    debit_count: int = 0
    credit_amount: int = 0
    credit_count: int = 0


@dataclass(slots=True)
class BatchTotals:
    """Totals of one terminal batch, split domestic (63.1 ``CUP``) / foreign as in §8."""

    domestic: SideTotals = field(default_factory=SideTotals)
    foreign: SideTotals = field(default_factory=SideTotals)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"domestic": dataclasses.asdict(self.domestic), "foreign": dataclasses.asdict(self.foreign)}


class JournalStore(Protocol):
    """What a storage backend provides.  All methods are coroutines and never block the event loop."""

    commit_count: int

    def set_commit_hook(self, hook: Any) -> None: ...
    def is_healthy(self) -> bool: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def insert(self, rec: TxnRecord) -> int: ...
    def update(self, txn_id: int, fields: Mapping[str, Any]) -> Awaitable[None]: ...
    async def get(self, txn_id: int) -> TxnRecord | None: ...
    async def find_by_trace(
        self, terminal_id: str, merchant_id: str, batch: int | None, stan: str, mti_class: str | None
    ) -> TxnRecord | None: ...
    async def find_by_rrn(self, terminal_id: str, merchant_id: str, rrn: str) -> TxnRecord | None: ...
    async def find_by_pan_hash(self, pan_hash: str, limit: int) -> list[TxnRecord]: ...
    async def refunded_total(self, original_id: int) -> int: ...
    async def child_total(self, original_id: int, txn_types: tuple[str, ...]) -> int: ...
    async def batch_totals(self, terminal_id: str, merchant_id: str, batch: int) -> BatchTotals: ...
    async def in_flight(self) -> list[TxnRecord]: ...
    async def mark_settled(self, terminal_id: str, merchant_id: str, batch: int, at: float) -> int: ...
    async def rows_between(self, start: float, end: float, merchant_id: str | None) -> list[TxnRecord]: ...
    def scan_trace_keys(self, add: Any) -> None: ...
    def max_rrn_with_prefix(self, prefix: str) -> str | None: ...
    def rrn_high_water(self, prefix: str) -> int | None: ...
    def reserve_rrn(self, prefix: str, high_water: int) -> concurrent.futures.Future[Any]: ...


#: allowed values of the enumerated columns; ``None`` (not given) is always allowed
_CHECKED_VALUES: tuple[tuple[str, frozenset[Any]], ...] = (
    ("state", STATES | {None}),
    ("txn_type", TXN_TYPES | {None}),
    ("card_type", frozenset({"debit", "credit", "", None})),
    ("payment_method", PAYMENT_METHODS | {None}),
)
#: every allowed combination of those four values, in that order: one set lookup checks all four
_CHECKED_COMBINATIONS: frozenset[tuple[Any, ...]] = frozenset(itertools.product(*(a for _, a in _CHECKED_VALUES)))


#: columns an update may set that ``_prepare`` never looks at (no STAN, batch, checked value or trace key):
#: an update of only these and a valid ``state`` (an approval, a decline) needs no ``_prepare``
_PLAIN_UPDATE_COLUMNS: frozenset[str] = (
    _COLUMN_SET - {"stan", "batch", "terminal_id", "merchant_id"} - {name for name, _ in _CHECKED_VALUES}
) | {"state"}


def _check_fields(fields: Mapping[str, Any]) -> None:
    if not _COLUMN_SET.issuperset(fields):  # no forbidden name is a column: one check when all is well
        for key in sorted(fields.keys() - _COLUMN_SET):
            if key.lower() in FORBIDDEN_KEYS:
                raise JournalError(f"journal: field {key!r} must never be stored")
            raise JournalError(f"journal: unknown field {key!r}")
    get = fields.get
    try:
        if (get("state"), get("txn_type"), get("card_type"), get("payment_method")) in _CHECKED_COMBINATIONS:
            return  # the common case: all four allowed (or not given)
    except TypeError:  # unhashable: the loop below names it
        pass
    for name, allowed in _CHECKED_VALUES:
        value = get(name)
        try:
            ok = value in allowed
        except TypeError:  # unhashable
            ok = False
        if not ok:
            raise JournalError(f"journal: unknown {name} {value!r}")


class RrnGenerator:
    """12-digit retrieval reference numbers: ``Y DDD`` (last year digit, day of year) + 8-digit sequence.

    Uniqueness survives restarts without a write per RRN: numbers are handed out only below a durable
    high-water mark (table ``rrn_block``).  Half-way through a block the next block is reserved in the
    background (group-committed like any journal write); only if that reservation has not committed
    when the block runs out (or on the first RRN of a day) does :meth:`next` wait for a reservation.
    After a restart the sequence resumes above the reserved mark and above every RRN in the journal.
    """

    BLOCK = 1000

    def __init__(self, store: JournalStore, clock: Any = time.localtime) -> None:
        self._store = store
        self._clock = clock
        self._prefix = ""
        self._seq = 0
        self._hwm = 0  # durable: every number handed out is <= this
        self._reserving: tuple[int, Any] | None = None  # (target, concurrent future)
        #: the default clock: today's prefix is formatted once per second (``(second, prefix)``)
        self._per_second: list[Any] | None = [-1, ""] if clock is time.localtime else None

    def _start_day(self, prefix: str) -> None:
        top = self._store.max_rrn_with_prefix(prefix)
        mark = self._store.rrn_high_water(prefix) or 0
        self._seq = max(int(top[4:]) if top else 0, mark)
        self._hwm = self._seq
        self._reserving = None
        self._prefix = prefix

    def prime(self) -> None:
        """Load today's state and reserve the first block (blocking: run it off the event loop)."""
        t = self._clock()
        prefix = f"{t.tm_year % 10}{t.tm_yday:03d}"
        self._start_day(prefix)
        target = self._seq + self.BLOCK
        self._store.reserve_rrn(prefix, target).result()
        self._hwm = target

    def _today(self) -> str:
        """``Y DDD`` of the clock's today."""
        cached = self._per_second
        if cached is None:
            t = self._clock()
            return f"{t.tm_year % 10}{t.tm_yday:03d}"
        second = int(time.time())  # what localtime() reads
        if second != cached[0]:
            t = time.localtime(second)
            cached[0], cached[1] = second, f"{t.tm_year % 10}{t.tm_yday:03d}"
        return cached[1]  # type: ignore[no-any-return]

    def next(self) -> str:
        prefix = self._today()
        if prefix != self._prefix:
            self._start_day(prefix)
        if self._reserving is not None and self._reserving[1].done():
            target, fut = self._reserving
            self._reserving = None
            fut.result()  # surface a failed reservation
            self._hwm = max(self._hwm, target)
        self._seq += 1
        if self._seq > 99_999_999:
            raise JournalError("journal: RRN sequence exhausted for today")
        if self._seq > self._hwm:
            if self._reserving is not None:
                target, fut = self._reserving
                self._reserving = None
                fut.result()
                self._hwm = max(self._hwm, target)
            if self._seq > self._hwm:
                target = self._seq + self.BLOCK
                self._store.reserve_rrn(prefix, target).result()
                self._hwm = target
        if self._reserving is None and self._seq > self._hwm - self.BLOCK // 2:
            target = self._hwm + self.BLOCK
            self._reserving = (target, self._store.reserve_rrn(prefix, target))
        return f"{prefix}{self._seq:08d}"


class TraceFilter:
    """Bloom filter of the (terminal, merchant, STAN) keys present in the journal.

    The flows look a STAN up for every financial request (duplicate check) and almost always find
    nothing; a definite "not present" from this filter answers that without a database round trip.
    A "maybe" falls through to the database, so answers stay exact.  2 MiB and 4 hashes keep false
    positives below 1 % up to about 1.5 million rows.

    Positions come from Python's own ``hash`` of the key tuple (double hashing: position ``i`` is
    ``h1 + i * h2`` modulo the size, ``h1`` from the low bits of the 64-bit hash, ``h2`` (odd) from the
    bits above 32).  String hashes are seeded per process, which is fine: the filter lives in one
    process and is rebuilt from the journal at start-up.  Expected false-positive rate ``(1 - exp(-k n / m)) ** k``: with the
    defaults (m = 2**24 bits, k = 4) under 0.0001 % at 100 000 keys, 0.2 % at 1 million, 0.8 % at
    1.5 million (measured: 0, 0.19 % and 0.81 % of 200 000 absent keys).
    """

    def __init__(self, bits: int = 1 << 24, hashes: int = 4) -> None:
        self._m = 1 << max(3, (bits - 1).bit_length())  # a power of two (``bits`` rounded up)
        self._mask = self._m - 1
        self._k = hashes
        self._bits = bytearray(self._m // 8)
        self.count = 0

    def add(self, terminal_id: str, merchant_id: str, stan: str) -> None:
        h = hash((str(terminal_id), str(merchant_id), str(stan)))  # as stored (TEXT); str(a str) is a no-op
        mask = self._mask
        p = h & mask
        step = ((h >> 32) & mask) | 1
        bits = self._bits
        for _ in range(self._k):
            bits[p >> 3] |= 1 << (p & 7)
            p = (p + step) & mask
        self.count += 1

    def might_contain(self, terminal_id: str, merchant_id: str, stan: str) -> bool:
        h = hash((str(terminal_id), str(merchant_id), str(stan)))  # as stored (TEXT); str(a str) is a no-op
        mask = self._mask
        p = h & mask
        step = ((h >> 32) & mask) | 1
        bits = self._bits
        for _ in range(self._k):
            if not bits[p >> 3] & (1 << (p & 7)):
                return False  # the common answer, usually at the first position
            p = (p + step) & mask
        return True


class Journal:
    """Async facade over a :class:`JournalStore`.

    ``Journal(path, pan_hash_key)`` uses the SQLite store; pass ``store=`` for another backend.
    ``group_commit_ms`` (SQLite store) is how long the writer keeps collecting more writes into one
    transaction while writes keep coming; the first write after an idle spell is committed at once
    (with whatever is already queued), so the window never delays a lone write.
    """

    def __init__(
        self,
        path: str | None = None,
        pan_hash_key: bytes = b"",
        *,
        group_commit_ms: float = 1.0,
        synchronous: str = "FULL",
        store: JournalStore | None = None,
        on_commit: Any = None,
    ) -> None:
        if len(pan_hash_key) < 16:
            raise JournalError("journal: pan_hash_key must be at least 16 bytes")
        if store is None:
            if path is None:
                raise JournalError("journal: a path (or a store) is required")
            from switch.journal_sqlite import SqliteJournalStore

            store = SqliteJournalStore(
                path, group_commit_ms=group_commit_ms, synchronous=synchronous, on_commit=on_commit
            )
        self.store: JournalStore = store
        self._key = bytes(pan_hash_key)
        self._hmac = hmac.new(self._key, digestmod=hashlib.sha256)  # keyed once, copied per PAN
        #: the OpenSSL object inside (copying it skips the Python wrapper: 1.2 -> 0.8 us per PAN)
        self._hmac_c: Any = getattr(self._hmac, "_hmac", None) or self._hmac
        self._rrn = RrnGenerator(store)
        self._traces = TraceFilter()
        self.trace_lookups_skipped = 0  # find_by_trace answered by the filter alone

    @classmethod
    async def open(cls, path: str, pan_hash_key: bytes, **kwargs: Any) -> Journal:
        journal = cls(path, pan_hash_key, **kwargs)
        await journal.start()
        return journal

    async def start(self) -> None:
        await self.store.start()
        loop = asyncio.get_running_loop()
        # the first RRN of the day needs a durable reservation: make it now, off the event loop
        await loop.run_in_executor(None, self._rrn.prime)
        # every STAN already journaled goes into the duplicate-check filter before the first request
        await loop.run_in_executor(None, self.store.scan_trace_keys, self._traces.add)

    def reversal_store(self) -> Any:
        """A durable ``ReversalStore`` for :class:`switch.issuer_link.IssuerLink` in this database."""
        from switch.journal_reversals import SqliteReversalStore

        return SqliteReversalStore(self)

    async def close(self) -> None:
        await self.store.close()

    def set_commit_hook(self, hook: Any) -> None:
        """``hook(writes, seconds)`` after every COMMIT (called on the writer thread; keep it cheap)."""
        self.store.set_commit_hook(hook)

    def is_healthy(self) -> bool:
        """True while the store accepts writes (for ``/health``)."""
        return self.store.is_healthy()

    def wal_bytes(self) -> int | None:
        """Size of the store's write-ahead log, None for a store without one."""
        size = getattr(self.store, "wal_bytes", None)
        return size() if size is not None else None

    @property
    def commit_count(self) -> int:
        """How many COMMITs the store has issued (group commit makes this far below the write count)."""
        return self.store.commit_count

    # -- helpers ----------------------------------------------------------------------------------------
    def pan_hash(self, pan: str) -> str:
        """HMAC-SHA256 of the PAN digits under the configured key (hex): equal PANs give equal hashes."""
        h = self._hmac_c.copy()
        h.update(pan.strip().encode("ascii"))
        return h.hexdigest()

    def next_rrn(self) -> str:
        """A fresh 12-digit RRN (field 37), unique for this journal."""
        return self._rrn.next()

    def _prepare(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Validate ``fields`` in place: the clear PAN becomes mask + hash, STAN ``"000123"``, batch int."""
        if "pan" in fields:
            pan = fields.pop("pan")
            if pan:
                if type(pan) is not str:
                    pan = pan.decode("ascii") if isinstance(pan, bytes | bytearray) else str(pan)
                fields["pan_masked"] = mask_pan(pan)
                fields["pan_hash"] = self.pan_hash(pan)
        stan = fields.get("stan")
        if stan is not None and not (type(stan) is str and len(stan) == 6 and stan.isascii() and stan.isdigit()):
            _normalize(fields, "stan", stan)  # the common case above is already normal
        batch = fields.get("batch")
        if batch is not None and not (type(batch) is int and 0 <= batch <= 999_999):
            _normalize(fields, "batch", batch)
        _check_fields(fields)
        return fields

    # -- writes -----------------------------------------------------------------------------------------
    async def record(self, txn: TxnRecord | Mapping[str, Any]) -> int:
        """Insert a new row; returns its id after the COMMIT.  A dict may carry a clear ``pan``."""
        if not isinstance(txn, TxnRecord):
            return await self.record_soon(txn)
        rec = txn
        _check_fields(dict(zip(COLUMNS, _record_values(rec), strict=True)))
        now = time.time()
        rec.created_at = rec.created_at or now
        rec.updated_at = now
        if rec.state == APPROVED and rec.approved_at is None:
            rec.approved_at = now
        self._traces.add(rec.terminal_id, rec.merchant_id, rec.stan)  # before the row can be read back
        rec.id = await self.store.insert(rec)
        return rec.id

    def record_soon(self, txn: Mapping[str, Any]) -> Awaitable[int]:
        """:meth:`record` of a dict without a coroutine of its own (a bad field raises here): await the
        result for the id after the COMMIT.  The row stays a dict (``TxnRecord``'s defaults filled in
        first, which ``_prepare`` accepts as it accepts absent keys) and goes to the store as a tuple when
        the store takes one (``insert_values``), so the sale path builds no ``TxnRecord``.  Same checks,
        same row as a ``TxnRecord`` would give."""
        fields = _ROW_DEFAULTS.copy()
        fields.update(txn)
        self._prepare(fields)
        if not (fields.get("terminal_id") and fields.get("merchant_id") and fields.get("txn_type")):
            for required in ("terminal_id", "merchant_id", "txn_type"):
                if not fields.get(required):
                    raise JournalError(f"journal: field {required!r} is required")
        now = time.time()
        fields["created_at"] = fields["created_at"] or now
        fields["updated_at"] = now
        if fields["state"] == APPROVED and fields["approved_at"] is None:
            fields["approved_at"] = now
        self._traces.add(fields["terminal_id"], fields["merchant_id"], fields["stan"])  # before it can be read back
        insert_values = getattr(self.store, "insert_values", None)
        if insert_values is not None:
            return insert_values(_row_values(fields))  # type: ignore[no-any-return]
        return self.store.insert(TxnRecord(**fields))

    insert = record

    async def update_state(self, txn_id: int, state: str, **fields: Any) -> None:
        """Move a row to ``state`` and set any other columns; resolves after the COMMIT."""
        fields["state"] = state
        await self._update(txn_id, state, fields)

    def _update(self, txn_id: int, state: str, fields: dict[str, Any]) -> Any:
        """``update_state`` with ``fields`` (a dict of our own, ``state`` included) already built."""
        if not (type(state) is str and state in STATES and _PLAIN_UPDATE_COLUMNS.issuperset(fields)):
            fields = self._prepare(fields)  # (with only plain columns and a known state it has nothing to do)
            if "stan" in fields or "terminal_id" in fields or "merchant_id" in fields:
                if fields.get("stan") or fields.get("terminal_id") or fields.get("merchant_id"):
                    self._traces = _widen(self._traces, fields)
        now = time.time()
        fields["updated_at"] = now
        if state == APPROVED and "approved_at" not in fields:
            fields["approved_at"] = now
        return self.store.update(txn_id, fields)

    async def commit_approval(
        self, txn_id: int, rrn: str | None, auth_code: str, response_code: str = "00", **fields: Any
    ) -> None:
        """Record an approval durably; call it before writing the approving reply to the terminal.

        ``rrn=None`` leaves the row's RRN as it is (the row was recorded with it): the UPDATE then touches
        no RRN index entry."""
        await self.commit_approval_soon(txn_id, rrn, auth_code, response_code, **fields)

    def commit_approval_soon(
        self, txn_id: int, rrn: str | None, auth_code: str, response_code: str = "00", **fields: Any
    ) -> Awaitable[None]:
        """:meth:`commit_approval` queued now: await the result (before replying) for the COMMIT.

        The write is in the store's queue when this returns, so other work (e.g. the reply MAC) can run
        while it commits; no task is created when the store hands back a future (the SQLite store does).
        """
        if "state" in fields:
            raise TypeError("commit_approval() got multiple values for keyword argument 'state'")
        fields["state"] = APPROVED
        if rrn is not None:
            fields["rrn"] = rrn
        fields["auth_code"] = auth_code
        fields["response_code"] = response_code
        pending = self._update(txn_id, APPROVED, fields)
        if isinstance(pending, asyncio.Future):  # the SQLite store's (asyncio.iscoroutine costs more)
            return pending
        return asyncio.ensure_future(pending) if asyncio.iscoroutine(pending) else pending

    # -- lookups ----------------------------------------------------------------------------------------
    async def get(self, txn_id: int) -> TxnRecord | None:
        return await self.store.get(txn_id)

    def trace_absent(self, terminal_id: str, merchant_id: str, stan: str) -> bool:
        """True when :meth:`find_by_trace` of this 6-digit STAN (any batch) would answer None from the
        filter alone (counted the same); False means "ask :meth:`find_by_trace`".  Saves a coroutine."""
        if not (type(stan) is str and len(stan) == 6 and stan.isascii() and stan.isdigit()):
            return False  # find_by_trace normalises (or rejects) it
        if self._traces.might_contain(terminal_id, merchant_id, stan):
            return False
        self.trace_lookups_skipped += 1
        return True

    async def find_by_trace(
        self, terminal_id: str, merchant_id: str, batch: int | None, stan: str | int, mti_class: str | None = None
    ) -> TxnRecord | None:
        """Newest row of this terminal with that STAN (and batch when given; ``mti_class`` e.g. ``"02"``)."""
        if isinstance(stan, bool) or not str(stan).isdigit():
            raise JournalError(f"journal: field 'stan': expected digits, got {stan!r}")
        key = f"{int(stan):06d}"
        if not self._traces.might_contain(terminal_id, merchant_id, key):
            self.trace_lookups_skipped += 1
            return None
        return await self.store.find_by_trace(terminal_id, merchant_id, batch, key, mti_class)

    async def find_original(
        self, terminal_id: str, merchant_id: str, stan: str | int, batch: int | None
    ) -> TxnRecord | None:
        return await self.find_by_trace(terminal_id, merchant_id, batch, stan)

    async def find_by_rrn(self, terminal_id: str, merchant_id: str, rrn: str) -> TxnRecord | None:
        return await self.store.find_by_rrn(terminal_id, merchant_id, rrn)

    async def find_by_pan(self, pan: str, limit: int = 50) -> list[TxnRecord]:
        """Rows for a card, newest first, found through the keyed hash (the PAN itself is not stored)."""
        return await self.store.find_by_pan_hash(self.pan_hash(pan), limit)

    async def refunded_total(self, original_id: int) -> int:
        """Sum of approved (or settled) refunds pointing at ``original_id``, in fen."""
        return await self.store.refunded_total(original_id)

    async def child_total(self, original_id: int, txn_types: tuple[str, ...]) -> int:
        """Sum of approved, not reversed rows of ``txn_types`` pointing at ``original_id`` (fen).

        E.g. ``child_total(preauth_id, ("completion", "completion_advice"))`` before completing a pre-auth.
        """
        bad = [t for t in txn_types if t not in TXN_TYPES]
        if bad or not txn_types:
            raise JournalError(f"journal: unknown txn_type {bad[0]!r}" if bad else "journal: no txn_types given")
        return await self.store.child_total(original_id, tuple(txn_types))

    async def batch_totals(self, terminal_id: str, merchant_id: str, batch: int) -> BatchTotals:
        return await self.store.batch_totals(terminal_id, merchant_id, int(batch))

    async def in_flight(self) -> list[TxnRecord]:
        """Rows still ``received`` or ``sent`` (no outcome): candidates for reversal after a crash."""
        return await self.store.in_flight()

    async def mark_settled(self, terminal_id: str, merchant_id: str, batch: int) -> int:
        """Settle a batch: its approved / voided / refunded debit and credit rows become ``settled``.

        Pre-authorisations and balance enquiries are left alone (a pre-auth may complete in a later batch).
        Returns the number of rows settled.
        """
        return await self.store.mark_settled(terminal_id, merchant_id, int(batch), time.time())

    async def rows_between(self, start: float, end: float, merchant_id: str | None = None) -> list[TxnRecord]:
        """Rows created in ``[start, end)`` (epoch seconds), for reports."""
        return await self.store.rows_between(start, end, merchant_id)


def _normalize(fields: dict[str, Any], name: str, value: Any) -> None:
    """The general case of ``stan`` / ``batch`` in :meth:`Journal._prepare` (up to 6 digits)."""
    if value == "":
        return
    if isinstance(value, bool) or not str(value).isdigit() or len(str(int(value))) > 6:
        raise JournalError(f"journal: field {name!r}: expected up to 6 digits, got {value!r}")
    fields[name] = f"{int(value):06d}" if name == "stan" else int(value)


class _OpenFilter(TraceFilter):
    """A filter that says "maybe" to everything (after an update moved a row to an unknown key)."""

    def __init__(self) -> None:
        super().__init__(bits=8, hashes=1)

    def might_contain(self, terminal_id: str, merchant_id: str, stan: str) -> bool:
        return True


def _widen(current: TraceFilter, fields: Mapping[str, Any]) -> TraceFilter:
    """``update_state`` rewrote a key column: with the row's other key parts unknown here, stop filtering."""
    return current if isinstance(current, _OpenFilter) else _OpenFilter()
