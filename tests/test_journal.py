"""Journal: group commit, durability, no sensitive data on disk, lookups, refund and batch totals."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.journal import (
    APPROVED,
    CREDIT_TYPES,
    DEBIT_TYPES,
    Journal,
    JournalError,
    TxnRecord,
)
from switch.journal_sqlite import JOURNAL_MIGRATIONS

KEY = bytes(range(32))
PAN = "6212345678901234567"
TID, MID = "00000001", "898310048140001"


@pytest.fixture
async def journal(tmp_path: Path):
    j = await Journal.open(str(tmp_path / "j.db"), KEY, group_commit_ms=5.0)
    yield j
    await j.close()


def sale(**kw):
    base = dict(terminal_id=TID, merchant_id=MID, txn_type="sale", mti="0200", processing_code="000000",
                amount=1000, stan=1, batch=7, pan=PAN, card_org="CUP", payment_method="chip")
    base.update(kw)
    return base


async def test_group_commit_groups_concurrent_approvals(tmp_path: Path) -> None:
    sizes: list[int] = []
    j = await Journal.open(str(tmp_path / "g.db"), KEY, group_commit_ms=20.0, on_commit=lambda n, s: sizes.append(n))
    try:
        ids = await asyncio.gather(*(j.record(sale(stan=i)) for i in range(300)))
        inserts_commits = j.commit_count
        await asyncio.gather(*(j.commit_approval(i, j.next_rrn(), f"A{i:05d}") for i in ids))
        approval_commits = j.commit_count - inserts_commits
    finally:
        await j.close()
    assert len(set(ids)) == 300
    # 300 writes each way, but only a handful of COMMITs
    assert 1 <= inserts_commits <= 10
    assert 1 <= approval_commits <= 10
    assert sum(sizes) == 601 and max(sizes) > 30  # 600 writes + 1 RRN block reservation


async def test_approval_is_durable_before_the_call_returns(journal: Journal, tmp_path: Path) -> None:
    txn_id = await journal.record(sale())
    rrn = journal.next_rrn()
    await journal.commit_approval(txn_id, rrn, "123456", amount=900)
    fresh = sqlite3.connect(str(tmp_path / "j.db"))
    try:
        row = fresh.execute("SELECT state, rrn, auth_code, response_code, amount, approved_at FROM txn WHERE id=?",
                            (txn_id,)).fetchone()
    finally:
        fresh.close()
    assert row[:5] == ("approved", rrn, "123456", "00", 900)
    assert row[5] is not None


async def test_approval_without_rrn_keeps_the_recorded_one(journal: Journal, tmp_path: Path) -> None:
    """The sale path records the RRN with the row and approves with ``rrn=None``: the UPDATE leaves it."""
    rrn = journal.next_rrn()
    txn_id = await journal.record(sale(rrn=rrn, state="sent"))
    await journal.commit_approval(txn_id, None, "654321")
    row = await journal.get(txn_id)
    assert (row.state, row.rrn, row.auth_code) == ("approved", rrn, "654321")
    assert await journal.find_by_rrn(TID, MID, rrn) is not None


async def test_no_clear_pan_track_or_pin_block_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    j = await Journal.open(str(path), KEY)
    try:
        for i in range(20):
            await j.record(sale(stan=i))
        with pytest.raises(JournalError, match="track2"):
            await j.record(sale(track2=PAN + "=2512"))
        with pytest.raises(JournalError, match="pin_block"):
            await j.record(sale(pin_block="9CA4E8A0FA2C49B3"))
        with pytest.raises(JournalError, match="field52"):
            await j.update_state(1, APPROVED, field52=b"\x9c\xa4")
        rec = await j.get(1)
    finally:
        await j.close()
    assert rec is not None and rec.pan_masked == "621234*********4567"
    assert rec.pan_hash == j.pan_hash(PAN) and len(rec.pan_hash) == 64
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db"))
    assert b"621234*********4567" in blob  # the scan does see row data
    for needle in (PAN, PAN[6:15], PAN + "=2512", "9CA4E8A0FA2C49B3"):
        assert needle.encode() not in blob
    assert bytes.fromhex("6212345678901234") not in blob  # nor BCD-packed


async def test_lookups(journal: Journal) -> None:
    a = await journal.record(sale(stan=11, batch=1))
    b = await journal.record(sale(stan=11, batch=2, mti="0100", txn_type="preauth"))
    rrn = journal.next_rrn()
    await journal.commit_approval(a, rrn, "000111")
    assert (await journal.find_by_trace(TID, MID, 1, "000011")).id == a
    assert (await journal.find_by_trace(TID, MID, None, 11)).id == b  # newest first
    assert (await journal.find_by_trace(TID, MID, None, 11, mti_class="02")).id == a
    assert await journal.find_by_trace(TID, MID, 3, 11) is None
    assert await journal.find_by_trace("00000002", MID, 1, 11) is None
    assert (await journal.find_by_rrn(TID, MID, rrn)).id == a
    assert await journal.find_by_rrn(TID, "999999999999999", rrn) is None
    assert [r.id for r in await journal.find_by_pan(PAN)] == [b, a]
    assert await journal.find_by_pan("6212345678901235") == []


async def test_refunded_total_counts_only_successful_refunds(journal: Journal) -> None:
    orig = await journal.record(sale(amount=10_000, state=APPROVED))
    for amount, outcome in ((3000, "approved"), (2000, "approved"), (500, "declined"), (700, "reversed")):
        r = await journal.record(sale(txn_type="refund", amount=amount, original_id=orig, mti="0220"))
        if outcome == "approved":
            await journal.commit_approval(r, journal.next_rrn(), "R00001")
        elif outcome == "reversed":
            await journal.commit_approval(r, journal.next_rrn(), "R00002")
            await journal.update_state(r, "reversed")
        else:
            await journal.update_state(r, "declined", response_code="51")
    assert await journal.refunded_total(orig) == 5000
    assert await journal.refunded_total(orig + 1000) == 0
    assert await journal.child_total(orig, ("refund",)) == 5000
    assert await journal.child_total(orig, ("completion", "completion_advice")) == 0
    with pytest.raises(JournalError, match="unknown txn_type 'gift'"):
        await journal.child_total(orig, ("gift",))


async def test_child_total_of_a_preauth(journal: Journal) -> None:
    pre = await journal.record(sale(txn_type="preauth", amount=10_000, state=APPROVED))
    c1 = await journal.record(sale(txn_type="completion", amount=6_000, original_id=pre))
    assert await journal.child_total(pre, ("completion", "completion_advice")) == 0  # not approved yet
    await journal.commit_approval(c1, journal.next_rrn(), "C00001")
    c2 = await journal.record(sale(txn_type="completion_advice", amount=1_000, original_id=pre))
    await journal.commit_approval(c2, journal.next_rrn(), "C00002")
    c3 = await journal.record(sale(txn_type="completion", amount=500, original_id=pre))
    await journal.commit_approval(c3, journal.next_rrn(), "C00003")
    await journal.update_state(c3, "reversed")
    assert await journal.child_total(pre, ("completion", "completion_advice")) == 7_000
    assert await journal.child_total(pre, ("completion",)) == 6_000


async def test_batch_totals_follow_section_8(journal: Journal) -> None:
    async def approved(**kw) -> int:
        txn_id = await journal.record(sale(**kw))
        await journal.commit_approval(txn_id, journal.next_rrn(), "000001")
        return txn_id

    s1 = await approved(amount=1000)
    await approved(amount=2000, card_org="VIS")
    await approved(amount=300, txn_type="void", original_id=s1)
    await journal.update_state(s1, "voided")  # a voided sale still counts on the debit side
    await approved(amount=400, txn_type="refund", card_org="MCC")
    await approved(amount=500, txn_type="completion")
    rev = await approved(amount=700)
    await journal.update_state(rev, "reversed")
    await journal.record(sale(amount=800))  # never approved
    await approved(amount=900, txn_type="preauth")  # not part of the totals
    await approved(amount=50, batch=8)  # other batch
    t = await journal.batch_totals(TID, MID, 7)
    assert (t.domestic.debit_amount, t.domestic.debit_count) == (1500, 2)
    assert (t.domestic.credit_amount, t.domestic.credit_count) == (300, 1)
    assert (t.foreign.debit_amount, t.foreign.debit_count) == (2000, 1)
    assert (t.foreign.credit_amount, t.foreign.credit_count) == (400, 1)
    assert await journal.mark_settled(TID, MID, 7) == 5
    assert await journal.batch_totals(TID, MID, 7) == t  # settled rows keep counting
    assert (await journal.get(s1)).state == "settled"


async def test_in_flight_and_states(journal: Journal) -> None:
    a = await journal.record(sale(stan=1))
    b = await journal.record(sale(stan=2))
    c = await journal.record(sale(stan=3))
    await journal.update_state(b, "sent", issuer="cup")
    await journal.update_state(c, "declined", response_code="51")
    assert [r.id for r in await journal.in_flight()] == [a, b]
    with pytest.raises(JournalError, match="unknown state"):
        await journal.update_state(a, "lost")
    with pytest.raises(JournalError, match="no transaction with id 999"):
        await journal.update_state(999, "sent")


async def test_one_bad_write_does_not_sink_its_group(journal: Journal) -> None:
    results = await asyncio.gather(
        *(journal.record(sale(stan=i)) for i in range(10)),
        journal.update_state(12345, "sent"),
        *(journal.record(sale(stan=i)) for i in range(10, 20)),
        return_exceptions=True,
    )
    assert isinstance(results[10], JournalError)
    ok = [r for r in results if isinstance(r, int)]
    assert len(ok) == 20
    assert len(await journal.in_flight()) == 20


async def test_results_come_back_with_one_wakeup_per_commit(journal: Journal, monkeypatch) -> None:
    import switch.journal_sqlite as js

    wakeups: list[int] = []
    resolve = js._resolve  # what each call_soon_threadsafe from the writer thread runs on the loop
    monkeypatch.setattr(js, "_resolve", lambda items: (wakeups.append(len(items)), resolve(items)))
    rrns = [journal.next_rrn() for _ in range(100)]  # within the reserved block: no commit of its own
    commits = journal.commit_count
    ids = await asyncio.gather(*(journal.record(sale(stan=i)) for i in range(100)))
    await asyncio.gather(*(journal.commit_approval(i, rrn, "000001") for i, rrn in zip(ids, rrns, strict=True)))
    assert sum(wakeups) == 200
    assert len(wakeups) == journal.commit_count - commits  # not one per write


def test_a_failing_operation_fails_alone_on_the_replay_path(tmp_path: Path) -> None:
    from switch.journal_sqlite import SqliteWriter

    w = SqliteWriter(str(tmp_path / "w.db"), group_commit_ms=0.0, synchronous="OFF")
    w.start(lambda c: c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    try:
        started, gate = threading.Event(), threading.Event()

        def hold(c: sqlite3.Connection) -> None:  # holds the thread so that everything below forms one batch
            started.set()
            gate.wait(60)

        w.submit(hold)
        assert started.wait(60)

        def insert(v: str):
            return w.submit(lambda c: c.execute("INSERT INTO t(v) VALUES (?)", (v,)).lastrowid)

        def half_done(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t(v) VALUES ('half')")  # undone together with its operation
            raise ValueError("boom")

        first, bad, second = insert("a"), w.submit(half_done), insert("b")
        dup = insert("a")  # a constraint error in the same batch
        skipped = insert("never")
        assert skipped.cancel()  # cancelled before the write started: not run at all
        last = insert("c")
        commits, replays = w.commit_count, w.replay_count
        gate.set()
        assert (first.result(60), second.result(60), last.result(60)) == (1, 2, 3)
        with pytest.raises(ValueError, match="boom"):
            bad.result(60)
        with pytest.raises(sqlite3.IntegrityError):
            dup.result(60)
        assert skipped.cancelled()
        # the holding batch, then one batch for the rest, replayed once
        assert w.commit_count == commits + 2 and w.replay_count == replays + 1
        rows = w.submit(lambda c: c.execute("SELECT id, v FROM t ORDER BY id").fetchall()).result(60)
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
    finally:
        w.stop()


def test_an_idle_writer_does_not_wait_for_the_group_commit_window(tmp_path: Path) -> None:
    from switch.journal_sqlite import SqliteWriter

    w = SqliteWriter(str(tmp_path / "i.db"), group_commit_ms=3_600_000.0, synchronous="OFF")
    w.start()
    try:  # an hour-long window: these would hang if the first write of an idle spell waited for it
        for i in range(3):
            _wait_until_idle(w)  # (a write queued before the writer is back in its wait is not "idle")
            assert w.submit(lambda c, i=i: c.execute("SELECT ?", (i,)).fetchone()[0]).result(60) == i
    finally:
        w.stop()


def _wait_until_idle(writer: Any) -> None:
    """Wait until the writer thread stands at its idle wait in ``SqliteWriter._run`` (the line that
    takes the next operation with ``idle`` True).  Right after a commit's results are delivered it is
    still between the commit and that line, and a write queued then counts as work that came in during
    the commit, which waits for the group-commit window: that is the writer's design, not what this
    test is about."""
    import inspect
    import sys
    import time

    from switch.journal_sqlite import SqliteWriter

    source, first = inspect.getsourcelines(SqliteWriter._run)
    idle_line = first + next(n for n, text in enumerate(source) if "q.get(), True" in text)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(writer._thread.ident)
        if frame is not None and frame.f_code is SqliteWriter._run.__code__ and frame.f_lineno == idle_line:
            return
        time.sleep(0.001)
    raise AssertionError("the journal writer never went idle")


async def test_rrn_is_unique_and_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    j = await Journal.open(path, KEY)
    rrns = [j.next_rrn() for _ in range(2500)]  # several reservation blocks, none of them journaled
    await j.close()
    assert len(set(rrns)) == 2500 and all(len(r) == 12 and r.isdigit() for r in rrns)
    assert rrns == sorted(rrns)
    j2 = await Journal.open(path, KEY)
    try:
        again = [j2.next_rrn() for _ in range(10)]
    finally:
        await j2.close()
    assert again[0][:4] == rrns[-1][:4] and int(again[0][4:]) > int(rrns[-1][4:])
    conn = sqlite3.connect(path)
    try:  # a handful of reservation commits, not one per RRN
        (mark,) = conn.execute("SELECT high_water FROM rrn_block").fetchone()
    finally:
        conn.close()
    assert int(again[-1][4:]) <= mark


async def test_rrn_sequence_restarts_each_day(journal: Journal) -> None:
    import time as _time

    from switch.journal import RrnGenerator

    def day(n: int) -> _time.struct_time:
        return _time.struct_time((2025, 1, n, 0, 0, 0, 0, n, 0))

    clock = [day(5)]
    gen = RrnGenerator(journal.store, clock=lambda: clock[0])
    assert [gen.next() for _ in range(3)] == ["500500000001", "500500000002", "500500000003"]
    clock[0] = day(6)
    assert gen.next() == "500600000001"
    clock[0] = day(5)  # clock stepped back: no reuse
    assert int(gen.next()[4:]) > 3
    await journal.record(sale(rrn="500700000500"))  # RRNs already in the journal are skipped too
    clock[0] = day(7)
    assert gen.next() == "500700000501"
    other = RrnGenerator(journal.store, clock=lambda: day(6))  # a second generator (a restart) on day 6
    assert int(other.next()[4:]) > 1000  # above the reserved block, not 000002


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    for _ in range(3):
        j = await Journal.open(path, KEY)
        await j.record(sale())
        await j.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version WHERE component='journal'").fetchone() == (
            JOURNAL_MIGRATIONS[-1][0],)
        assert conn.execute("SELECT COUNT(*) FROM txn").fetchone() == (3,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_old_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    from switch.journal_sqlite import JOURNAL_MIGRATIONS, connect, migrate

    path = str(tmp_path / "old.db")
    conn = connect(path)
    migrate(conn, "journal", JOURNAL_MIGRATIONS[:1])  # a version-1 database with one row
    conn.execute("INSERT INTO txn(terminal_id, merchant_id, txn_type, state, created_at, updated_at) "
                 "VALUES ('00000001', '898310048140001', 'sale', 'approved', 1, 1)")
    conn.close()
    j = await Journal.open(path, KEY)
    try:
        old = await j.get(1)
        assert old is not None and old.card_type == "" and old.upstream_ref == ""
        new = await j.record(sale(upstream_ref="123456|1122021530", card_type="debit"))
        await j.commit_approval(new, j.next_rrn(), "000002", upstream_ref="654321|1122021531")
        assert (await j.get(new)).upstream_ref == "654321|1122021531"
    finally:
        await j.close()


def test_bad_input_is_named() -> None:
    with pytest.raises(JournalError, match="pan_hash_key"):
        Journal("x.db", b"short")


async def test_record_rejects_unknown_fields_and_types(journal: Journal) -> None:
    with pytest.raises(JournalError, match="'colour'"):
        await journal.record(sale(colour="red"))
    with pytest.raises(JournalError, match="txn_type 'gift'"):
        await journal.record(sale(txn_type="gift"))
    with pytest.raises(JournalError, match="'merchant_id' is required"):
        await journal.record({"terminal_id": TID, "txn_type": "sale"})
    with pytest.raises(JournalError, match="field 'stan': expected up to 6 digits, got '12a'"):
        await journal.record(sale(stan="12a"))
    with pytest.raises(JournalError, match="field 'batch'"):
        await journal.update_state(1, "sent", batch=1234567)
    rec = TxnRecord(terminal_id=TID, merchant_id=MID, txn_type="balance")
    assert await journal.record(rec) == rec.id


# -- differential property: SQL batch totals == a plain Python model of §8 ----------------------------------

_row = st.tuples(
    st.sampled_from(sorted(DEBIT_TYPES | CREDIT_TYPES | {"balance", "preauth"})),
    st.sampled_from(["CUP", "VIS", "MCC", ""]),
    st.sampled_from(["approved", "declined", "reversed", "voided", "received"]),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from([1, 2]),
)


@settings(max_examples=25)
@given(rows=st.lists(_row, max_size=30))
def test_batch_totals_match_a_python_model(rows) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as d:
            j = await Journal.open(str(Path(d) / "p.db"), KEY, synchronous="OFF")
            try:
                for i, (typ, org, state, amount, batch) in enumerate(rows):
                    txn_id = await j.record(sale(txn_type=typ, card_org=org, amount=amount, batch=batch, stan=i))
                    if state != "received":
                        if state != "declined":
                            await j.commit_approval(txn_id, j.next_rrn(), "000001")
                        if state != "approved":
                            await j.update_state(txn_id, state)
                got = await j.batch_totals(TID, MID, 1)
            finally:
                await j.close()
        want = {("d", "D"): [0, 0], ("d", "C"): [0, 0], ("f", "D"): [0, 0], ("f", "C"): [0, 0]}
        for typ, org, state, amount, batch in rows:
            if batch != 1 or state in ("declined", "reversed", "received"):
                continue
            if typ in DEBIT_TYPES or typ in CREDIT_TYPES:
                key = ("d" if org == "CUP" else "f", "D" if typ in DEBIT_TYPES else "C")
                want[key][0] += amount
                want[key][1] += 1
        for side, obj in (("d", got.domestic), ("f", got.foreign)):
            assert [obj.debit_amount, obj.debit_count] == want[(side, "D")]
            assert [obj.credit_amount, obj.credit_count] == want[(side, "C")]

    asyncio.run(run())


_CHILD = """
import asyncio, sys
from switch.journal import Journal

async def main():
    j = await Journal.open(sys.argv[1], bytes(range(32)))
    txn = await j.record(dict(terminal_id="00000001", merchant_id="898310048140001", txn_type="sale",
                              amount=4321, stan=9, batch=1, pan="6212345678901234567", card_org="CUP"))
    rrn = j.next_rrn()
    await j.commit_approval(txn, rrn, "654321")
    print(txn, rrn, flush=True)
    await asyncio.sleep(3600)  # killed here, never closes the journal

asyncio.run(main())
"""


def test_approval_survives_a_killed_process(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "k.db")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    txn_id, rrn = line.split()
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT state, rrn, auth_code, amount FROM txn WHERE id=?", (int(txn_id),)).fetchone()
    finally:
        conn.close()
    assert row == ("approved", rrn, "654321", 4321)


async def test_cancelled_callers_neither_lose_writes_nor_stop_the_journal(journal: Journal) -> None:
    tasks = [asyncio.ensure_future(journal.record(sale(stan=i))) for i in range(50)]
    await asyncio.sleep(0)  # let them enqueue
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    written = [r for r in done if isinstance(r, int)]
    assert len(written) == 25 and sum(isinstance(r, asyncio.CancelledError) for r in done) == 25
    # the writer thread is still alive and serving
    txn = await journal.record(sale(stan=999))
    await journal.commit_approval(txn, journal.next_rrn(), "000009")
    assert (await journal.get(txn)).state == "approved"
    # a write handed to the journal is kept even when its caller was cancelled
    assert len(await journal.in_flight()) == 50


async def test_duplicate_check_filter_is_exact_across_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "f.db")
    j = await Journal.open(path, KEY)
    try:
        for i in range(1, 201):
            await j.record(sale(stan=i, batch=1))
        assert (await j.find_by_trace(TID, MID, 1, 150)).stan == "000150"
        before = j.trace_lookups_skipped
        assert await j.find_by_trace(TID, MID, 1, 999_999) is None
        assert await j.find_by_trace("00000009", MID, None, 150) is None
        assert j.trace_lookups_skipped >= before + 1  # answered without a database round trip
    finally:
        await j.close()
    j2 = await Journal.open(path, KEY)  # a new process: the filter is rebuilt from the file
    try:
        found = [await j2.find_by_trace(TID, MID, 1, i) for i in range(1, 201)]
        assert all(r is not None and int(r.stan) == i for i, r in enumerate(found, 1))
        new = await j2.record(sale(stan=424242, batch=1))
        assert (await j2.find_by_trace(TID, MID, 1, 424242)).id == new
        await j2.update_state(new, "sent", stan=555)  # a key column rewritten: lookups stay exact
        assert (await j2.find_by_trace(TID, MID, 1, 555)).id == new
        assert await j2.find_by_trace(TID, MID, 1, 424242) is None
    finally:
        await j2.close()


def test_trace_filter_false_positive_rate_is_low() -> None:
    from switch.journal import TraceFilter

    f = TraceFilter()
    for i in range(30_000):
        f.add(f"{i % 500:08d}", "898310048140001", f"{i:06d}")
    assert all(f.might_contain(f"{i % 500:08d}", "898310048140001", f"{i:06d}") for i in range(0, 30_000, 7))
    false_hits = sum(f.might_contain("99999999", "898310048140001", f"{i:06d}") for i in range(10_000))
    assert false_hits < 10  # < 0.1 % at 30 000 keys (expected far less)
