"""The journal's fast paths write exactly what the general path writes.

``Journal.record`` of a dict fills ``TxnRecord``'s defaults into the dict and hands the store a tuple
(``insert_values``) instead of building a ``TxnRecord``; ``_check_fields`` checks the four enumerated
values with one set lookup; an update of plain columns (an approval, a decline) skips ``_prepare``.
Each is compared here with the general path on random (also odd) input: same error, or the same row.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import switch.journal as J
from switch.journal import COLUMNS, Journal, JournalError, TxnRecord
from switch.journal_sqlite import SqliteJournalStore

KEY = bytes(range(32))
PAN = "6212345678901234567"
NOW = 1_790_000_000.25


class _NoTupleStore(SqliteJournalStore):
    """A store without ``insert_values``: the journal falls back to a ``TxnRecord``."""

    insert_values = None  # type: ignore[assignment]


class _Bench:
    """Three journals on one loop: ``fast`` (as shipped), ``fallback`` (no ``insert_values``) and ``ref``
    (the general path: ``_prepare`` of a copy, ``TxnRecord(**fields)``, the per-value check loop, and
    ``_prepare`` on every update)."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.root = root
        self.mp = pytest.MonkeyPatch()
        self.mp.setattr(J, "time", types.SimpleNamespace(time=lambda: NOW, localtime=time.localtime))  # same stamps

        async def _open() -> tuple[Journal, Journal, Journal]:
            fast = await Journal.open(str(root / "fast.db"), KEY, synchronous="OFF")
            ref = await Journal.open(str(root / "ref.db"), KEY, synchronous="OFF")
            fallback = Journal(pan_hash_key=KEY, store=_NoTupleStore(str(root / "fallback.db"), synchronous="OFF"))
            await fallback.start()
            return fast, ref, fallback

        self.fast, self.ref, self.fallback = self.run(_open())
        self.dbs = {"fast": "fast.db", "ref": "ref.db", "fallback": "fallback.db"}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        for j in (self.fast, self.ref, self.fallback):
            self.run(j.close())
        self.loop.close()
        self.mp.undo()

    def row(self, name: str, txn_id: int) -> dict[str, Any]:
        with sqlite3.connect(self.root / self.dbs[name]) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM txn WHERE id=?", (txn_id,)).fetchone()
        assert row is not None
        return {k: row[k] for k in row.keys() if k != "id"}


async def _outcome(coro: Any) -> tuple[Any, ...]:
    try:
        return ("ok", await coro)
    except (JournalError, TypeError, ValueError, sqlite3.Error, UnicodeError) as exc:
        return ("error", type(exc), str(exc))


async def _ref_record(journal: Journal, txn: dict[str, Any]) -> int:
    """``record`` of a dict the general way (before the fast path): a checked ``TxnRecord``."""
    fields = journal._prepare(dict(txn))
    for required in ("terminal_id", "merchant_id", "txn_type"):
        if not fields.get(required):
            raise JournalError(f"journal: field {required!r} is required")
    return await journal.record(TxnRecord(**fields))


@pytest.fixture(scope="module")
def bench() -> Iterator[_Bench]:
    with tempfile.TemporaryDirectory() as d:
        b = _Bench(Path(d))
        try:
            yield b
        finally:
            b.close()


_text = st.text(alphabet="0123456789 aZ*-", max_size=8)
_digits = st.text(alphabet="0123456789", min_size=1, max_size=6)
_number = st.one_of(_digits, _digits, st.integers(0, 999_999), st.integers(-3, 10**7),
                    st.text(alphabet="0123456789", max_size=8), st.just(""), st.none(), st.booleans(),
                    st.just("12a"), st.just(3.0))
_odd = st.one_of(st.none(), st.just(""), st.just("bogus"), st.just(["list"]), st.integers(0, 3))


def _one_of(values: Any) -> Any:
    valid = st.sampled_from(sorted(values))
    return st.one_of(valid, valid, valid, _odd)  # mostly allowed values


_MISSING = object()
_record_fields = st.fixed_dictionaries(
    {  # the required keys: mostly the sale path's values (upstream._authorize), sometimes odd or missing
        "terminal_id": st.one_of(st.just("00000001"), st.just("00000001"), _text, st.none(), st.just(_MISSING)),
        "merchant_id": st.one_of(st.just("898310048140001"), st.just(""), st.just(_MISSING)),
        "txn_type": st.one_of(st.just("sale"), st.just("sale"), _one_of(J.TXN_TYPES), st.just(_MISSING)),
    },
    optional={  # the sale path's other keys (every value normal) and anything else a flow or a test may give
        "state": _one_of(J.STATES),
        "card_type": _one_of({"debit", "credit", ""}),
        "payment_method": _one_of(J.PAYMENT_METHODS),
        "mti": st.sampled_from(["0200", "0220", ""]),
        "processing_code": st.just("000000"),
        "amount": st.one_of(st.integers(0, 10**12), st.none()),
        "currency": st.sampled_from(["156", "840"]),
        "stan": _number,
        "batch": _number,
        "rrn": st.text(alphabet="0123456789", max_size=12),
        "card_org": st.sampled_from(["CUP", "VIS", ""]),
        "entry_mode": st.sampled_from(["021", "051", ""]),
        "issuer": st.sampled_from(["cup", ""]),
        "pan": st.one_of(st.just(PAN), st.just(PAN.encode()), st.just(f" {PAN} "), st.just(""), st.none(),
                         st.text(alphabet="0123456789", min_size=1, max_size=19)),
        "pan_masked": st.just("x"),
        "created_at": st.one_of(st.just(0.0), st.floats(1.0, 2e9), st.none()),
        "approved_at": st.one_of(st.none(), st.floats(1.0, 2e9)),
        "upstream_ref": _text,
        "_extra": st.sampled_from(["track2", "PIN", "bogus", "id"]),  # a key that is no column
    },
).map(lambda d: {(d[k] if k == "_extra" else k): v for k, v in d.items() if v is not _MISSING})

#: the dict the sale path builds (upstream._authorize), random but normal values
_sale_fields = st.fixed_dictionaries({
    "terminal_id": st.text(alphabet="0123456789", min_size=8, max_size=8),
    "merchant_id": st.text(alphabet="0123456789", min_size=15, max_size=15),
    "txn_type": st.sampled_from(["sale", "preauth", "balance", "refund", "completion", "void"]),
    "mti": st.sampled_from(["0200", "0100", "0220"]), "processing_code": st.sampled_from(["000000", "200000"]),
    "state": st.sampled_from(["sent", "approved", "received"]), "amount": st.integers(0, 10**12), "currency": st.sampled_from(["156", "840"]),
    "stan": st.text(alphabet="0123456789", min_size=6, max_size=6), "batch": st.integers(0, 999_999),
    "rrn": st.text(alphabet="0123456789", min_size=12, max_size=12), "card_org": st.sampled_from(["CUP", "VIS"]),
    "payment_method": st.sampled_from(sorted(J.PAYMENT_METHODS)), "entry_mode": st.sampled_from(["021", "071"]),
    "issuer": st.sampled_from(["cup", "visa"]), "pan": st.text(alphabet="0123456789", min_size=12, max_size=19),
}, optional={"original_id": st.integers(1, 3), "approved_at": st.floats(1.0, 2e9), "created_at": st.floats(0.0, 2e9)})

_update_fields = st.fixed_dictionaries(
    {},
    optional={
        "response_code": st.sampled_from(["00", "05", "98"]),
        "auth_code": _text,
        "upstream_ref": _text,
        "card_org": st.sampled_from(["CUP", "VIS"]),
        "amount": st.integers(0, 10**6),
        "approved_at": st.floats(1.0, 2e9),
        "updated_at": st.floats(1.0, 2e9),
        "rrn": st.text(alphabet="0123456789", max_size=12),
        "stan": _number,
        "batch": _number,
        "card_type": _one_of({"debit", "credit", ""}),
        "terminal_id": st.sampled_from(["00000001", ""]),
        "pan": st.just(PAN),
        "_extra": st.sampled_from(["pin_block", "bogus"]),
    },
).map(lambda d: {(d[k] if k == "_extra" else k): v for k, v in d.items()})


def _ref_mode(bench: _Bench) -> pytest.MonkeyPatch:
    """The general path: the per-value check loop and ``_prepare`` on every update."""
    m = pytest.MonkeyPatch()
    m.setattr(J, "_CHECKED_COMBINATIONS", frozenset())
    m.setattr(J, "_PLAIN_UPDATE_COLUMNS", frozenset())
    return m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txn=st.one_of(_sale_fields, _record_fields), update=_update_fields,
       state=st.one_of(st.sampled_from(sorted(J.STATES)), st.just("bogus"), st.just(["x"])),
       approve=st.booleans())
def test_record_and_updates_write_the_rows_of_the_general_path(
    bench: _Bench, txn: dict[str, Any], update: dict[str, Any], state: Any, approve: bool
) -> None:
    given_txn = dict(txn)
    fast = bench.run(_outcome(bench.fast.record(txn)))
    fallback = bench.run(_outcome(bench.fallback.record(txn)))
    ref_mode = _ref_mode(bench)
    try:
        ref = bench.run(_outcome(_ref_record(bench.ref, txn)))
    finally:
        ref_mode.undo()
    assert txn == given_txn  # the caller's dict is not touched
    assert fast[0] == ref[0] == fallback[0], (fast, ref, fallback)
    event(f"record: {fast[0]}")
    if fast[0] == "error":
        assert fast == ref == fallback
        return
    ids = {"fast": fast[1], "ref": ref[1], "fallback": fallback[1]}
    expected = bench.row("ref", ids["ref"])
    assert bench.row("fast", ids["fast"]) == expected
    assert bench.row("fallback", ids["fallback"]) == expected
    stan = expected["stan"]
    for j in (bench.fast, bench.fallback, bench.ref):  # the duplicate-check filter knows the new row
        assert j._traces.might_contain(expected["terminal_id"], expected["merchant_id"], stan)

    async def _apply(j: Journal) -> tuple[Any, ...]:
        if approve:
            extra = {k: v for k, v in update.items() if k not in ("rrn", "auth_code", "response_code")}
            return await _outcome(j.commit_approval(ids_of[j], update.get("rrn"), "A1", **extra))
        return await _outcome(j.update_state(ids_of[j], state, **update))

    ids_of = {bench.fast: ids["fast"], bench.fallback: ids["fallback"], bench.ref: ids["ref"]}
    got_fast = bench.run(_apply(bench.fast))
    ref_mode = _ref_mode(bench)
    try:
        got_ref = bench.run(_apply(bench.ref))
    finally:
        ref_mode.undo()
    assert got_fast == got_ref
    event(f"{'approval' if approve else 'update'}: {got_fast[0]}")
    assert bench.row("fast", ids["fast"]) == bench.row("ref", ids["ref"])
    assert type(bench.fast._traces) is type(bench.ref._traces)


def test_the_sale_path_row_is_complete(bench: _Bench) -> None:
    """The dict ``_authorize`` builds: every column lands, PAN as mask + hash only."""
    txn = {
        "terminal_id": "00000001", "merchant_id": "898310048140001", "txn_type": "sale", "mti": "0200",
        "processing_code": "000000", "state": "sent", "amount": 1234, "currency": "156", "stan": "000042",
        "batch": 7, "rrn": "612300000042", "card_org": "CUP", "payment_method": "swipe", "entry_mode": "021",
        "issuer": "cup", "pan": PAN,
    }
    txn_id = bench.run(bench.fast.record(txn))
    row = bench.row("fast", txn_id)
    assert set(row) == set(COLUMNS)
    expected = {k: v for k, v in txn.items() if k != "pan"}
    assert {k: row[k] for k in expected} == expected
    assert row["pan_masked"] == "621234*********4567"
    assert row["pan_hash"] == J.pan_hash(KEY, PAN) == bench.fast.pan_hash(PAN)
    assert PAN not in repr(row)
    assert (row["created_at"], row["updated_at"], row["approved_at"]) == (NOW, NOW, None)
    bench.run(bench.fast.commit_approval(txn_id, None, "123456", upstream_ref="000042|1122334455"))
    row = bench.row("fast", txn_id)
    assert (row["state"], row["auth_code"], row["response_code"], row["rrn"]) == ("approved", "123456", "00",
                                                                                  "612300000042")
    assert (row["approved_at"], row["upstream_ref"]) == (NOW, "000042|1122334455")


@settings(max_examples=200, deadline=None)
@given(stan=st.one_of(st.text(alphabet="0123456789", min_size=6, max_size=6), st.sampled_from(
    ["000042", "42", "0000042", "١٢٣٤٥٦", "00004a", "", "000043"])), tid=st.sampled_from(["00000001", "00000002"]))
def test_trace_absent_is_find_by_trace_answering_from_the_filter(bench: _Bench, stan: str, tid: str) -> None:
    """``_authorize`` asks ``trace_absent`` before ``find_by_trace``: a True must be find_by_trace's None
    (counted the same way); a False leaves the answer (and the count) to find_by_trace."""
    j = bench.fast
    bench.run(j.record({"terminal_id": "00000001", "merchant_id": "898310048140001", "txn_type": "sale",
                        "stan": "000042", "batch": 7}))
    before = j.trace_lookups_skipped
    absent = j.trace_absent(tid, "898310048140001", stan)
    if absent:
        assert j.trace_lookups_skipped == before + 1
        before = j.trace_lookups_skipped
        assert bench.run(j.find_by_trace(tid, "898310048140001", None, stan)) is None
        assert j.trace_lookups_skipped == before + 1  # find_by_trace would have skipped the database too
    else:
        assert j.trace_lookups_skipped == before
    if (tid, stan) == ("00000001", "000042"):
        assert not absent


def test_record_soon_raises_at_the_call(bench: _Bench) -> None:
    with pytest.raises(JournalError, match="must never be stored"):
        bench.fast.record_soon({"terminal_id": "1", "merchant_id": "2", "txn_type": "sale", "track2": "x"})
    with pytest.raises(JournalError, match="is required"):
        bench.fast.record_soon({"terminal_id": "1", "merchant_id": "2"})


def test_rrn_prefix_of_the_default_clock_is_todays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default clock's prefix is formatted once per second; it is still localtime()'s day."""
    monkeypatch.setattr(J, "time", time)  # the real clock (the bench fixture freezes time.time)
    gen = J.RrnGenerator(store=None)  # type: ignore[arg-type]
    assert gen._per_second is not None
    for _ in range(3):
        before = time.localtime()
        prefix = gen._today()
        after = time.localtime()
        assert prefix in {f"{t.tm_year % 10}{t.tm_yday:03d}" for t in (before, after)}
    assert J.RrnGenerator(store=None, clock=lambda: time.localtime(0))._today() == "0001"  # type: ignore[arg-type]
