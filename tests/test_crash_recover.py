"""switch.recovery.recover() against the real in-process stack (switch.testbed).

A crash is staged the way ``kill -9`` leaves things: a journal row in state ``sent`` whose request
did (or did not) reach the issuer simulator, and no answer journaled.  recover() must queue a
durable 0420 for it, mark the row reversed, and once the link delivers the reversal the issuer
ledger and the journal agree (switch.reconcile finds no difference).
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from switch import h2h, reconcile
from switch.flows.upstream import original_h2h
from switch.recovery import recover
from switch.testbed import MERCHANT_ID, Stack, terminal_id

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def stack(tmp_path):
    st = await Stack.start(tmp_path, terminals=1, issuer_timeout=2.0)
    try:
        yield st
    finally:
        await st.stop()


async def _sent_row(stack: Stack, pan: str, amount: int, stan: str, *, reach_issuer: bool) -> tuple[int, str]:
    """Journal a sale in state 'sent' (as authorize() does) and optionally let the issuer approve it."""
    rrn = stack.journal.next_rrn()
    tid = terminal_id(0)
    up = h2h.financial_request("sale", terminal_id=tid, merchant_id=MERCHANT_ID, rrn=rrn, amount=amount,
                               pan=pan, expiry="3012", stan=stan)
    txn_id = await stack.journal.record({
        "terminal_id": tid, "merchant_id": MERCHANT_ID, "txn_type": "sale", "mti": "0200",
        "processing_code": "000000", "state": "sent", "amount": amount, "stan": stan, "batch": 1,
        "rrn": rrn, "card_org": "CUP", "payment_method": "swipe", "entry_mode": "021", "issuer": "cup",
        "pan": pan})
    if reach_issuer:
        resp = await stack.links["cup"].request(up)
        assert resp["39"] == "00", resp
    return txn_id, rrn


async def _drained(stack: Stack) -> None:
    for _ in range(400):
        if await stack.links["cup"].pending_reversals() == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("reversal never acknowledged")


def _reconcile(stack: Stack) -> reconcile.ReconcileResult:
    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    return reconcile.run(str(stack.workdir / "journal.db"), str(stack.workdir / "ledger-cup.db"), day)


async def test_in_flight_rows_are_reversed_and_ledger_agrees(stack):
    ledger = stack.issuers["cup"].ledger
    card_a, card_b = stack.card("cup", 0), stack.card("cup", 1)
    before_a, before_b = ledger.balance(card_a.pan), ledger.balance(card_b.pan)
    id_a, _ = await _sent_row(stack, card_a.pan, 1500, "000101", reach_issuer=True)  # approved upstream
    id_b, _ = await _sent_row(stack, card_b.pan, 2500, "000102", reach_issuer=False)  # lost before the issuer
    assert ledger.balance(card_a.pan) == before_a - 1500
    assert not _reconcile(stack).clean  # the debit is there, the journal has no outcome: a difference

    report = await recover(stack.journal, stack.links, second_pass=None)
    assert report.found == 2 and sorted(report.reversed) == sorted([id_a, id_b]) and report.clean
    for txn_id in (id_a, id_b):
        row = await stack.journal.get(txn_id)
        assert row is not None and row.state == "reversed" and row.response_code == "98"
    await _drained(stack)
    assert ledger.balance(card_a.pan) == before_a and ledger.balance(card_b.pan) == before_b
    res = _reconcile(stack)
    assert res.clean, reconcile.format_result(res)
    assert not await stack.journal.in_flight()


async def test_recovery_is_idempotent_and_rerun_finds_nothing(stack):
    ledger = stack.issuers["cup"].ledger
    card = stack.card("cup", 2)
    before = ledger.balance(card.pan)
    await _sent_row(stack, card.pan, 700, "000201", reach_issuer=True)
    first = await recover(stack.journal, list(stack.links.values()), second_pass=None)  # an iterable of links works too
    second = await recover(stack.journal, stack.links, second_pass=None)
    assert first.found == 1 and second.found == 0 and not second.reversed
    await _drained(stack)
    assert ledger.balance(card.pan) == before
    assert await stack.journal.in_flight() == []
    # a second 0420 for the same original (crash between queueing and marking) changes nothing
    [rec] = [r for r in await stack.journal.rows_between(0, 2e9) if r.stan == "000201"]
    await stack.links["cup"].reverse(original_h2h(rec, "00000000"), "98")
    await _drained(stack)
    assert ledger.balance(card.pan) == before
    assert _reconcile(stack).clean


async def test_row_without_a_link_is_left_and_reported(stack):
    card = stack.card("cup", 3)
    txn_id, _ = await _sent_row(stack, card.pan, 900, "000301", reach_issuer=False)
    report = await recover(stack.journal, {}, second_pass=None)  # the cup route no longer configured
    assert report.left == [txn_id] and not report.reversed and not report.clean
    row = await stack.journal.get(txn_id)
    assert row is not None and row.state == "sent"  # stays visible for posswitch reconcile


async def test_in_flight_qr_payment_is_cancelled_at_the_wallet(stack):
    """A QR pay the wallet completed (auto-confirming user) but the switch never answered: refunded."""
    from switch.testbed import qr_code

    rrn = stack.journal.next_rrn()
    tid = terminal_id(0)
    pay = h2h.qr_pay_request(payment_code=qr_code("134500000001"), amount=1230, terminal_id=tid,
                             merchant_id=MERCHANT_ID, rrn=rrn, stan="000401")
    await stack.journal.record({
        "terminal_id": tid, "merchant_id": MERCHANT_ID, "txn_type": "sale", "mti": "0200",
        "processing_code": "000000", "state": "sent", "amount": 1230, "stan": "000401", "batch": 1,
        "rrn": rrn, "card_org": "CUP", "payment_method": "qr", "entry_mode": "032", "issuer": "wallets"})
    resp = await stack.links["wallets"].request(pay)
    assert resp["39"] == "00", resp
    wallet_db = str(stack.workdir / "ledger-wallets.db")
    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    assert reconcile.read_ledger(wallet_db, day, [(tid, rrn)])[(tid, rrn)] == -1230  # the wallet debited

    report = await recover(stack.journal, stack.links, second_pass=None)
    assert report.by_issuer == {"wallets": 1}
    for _ in range(400):
        if await stack.links["wallets"].pending_reversals() == 0:
            break
        await asyncio.sleep(0.02)
    assert reconcile.read_ledger(wallet_db, day, [(tid, rrn)])[(tid, rrn)] == 0  # refunded
    res = reconcile.run(str(stack.workdir / "journal.db"), wallet_db, day, issuer="wallets")
    assert res.clean, reconcile.format_result(res)


async def test_reversal_overtaking_its_original_is_caught_by_the_second_pass(stack):
    """The original 0200 is still on its way (held 0.8 s by a proxy) when recovery's 0420 arrives: the
    issuer answers 25, then posts the late original; the second pass reverses it."""
    from switch.issuer_link import IssuerLink, MemoryReversalStore
    from switch.testing.faultproxy import FaultProxy, h2h_mti

    ledger = stack.issuers["cup"].ledger
    card = stack.card("cup", 5)
    before = ledger.balance(card.pan)
    proxy = FaultProxy("127.0.0.1", stack.issuer_ports["cup"])
    await proxy.start()
    dead = IssuerLink("127.0.0.1", proxy.port, name="cup", timeout=10.0, reversal_store=MemoryReversalStore())
    try:
        await dead.start(wait=5.0)  # the connection of the process that "died"
        held = proxy.up.delay(800, match=h2h_mti("0200"))
        rrn = stack.journal.next_rrn()
        tid = terminal_id(0)
        await stack.journal.record({
            "terminal_id": tid, "merchant_id": MERCHANT_ID, "txn_type": "sale", "mti": "0200",
            "processing_code": "000000", "state": "sent", "amount": 3300, "stan": "000501", "batch": 1,
            "rrn": rrn, "card_org": "CUP", "payment_method": "swipe", "entry_mode": "021", "issuer": "cup"})
        up = h2h.financial_request("sale", terminal_id=tid, merchant_id=MERCHANT_ID, rrn=rrn, amount=3300,
                                   pan=card.pan, expiry="3012", stan="000501")
        late = asyncio.ensure_future(dead.request(up))
        for _ in range(200):
            if held.hits:
                break
            await asyncio.sleep(0.01)
        assert held.hits == 1
        report = await recover(stack.journal, stack.links, second_pass=1.5)
        await _drained(stack)  # the first 0420 is answered (25: nothing to reverse yet)
        assert (await late)["39"] == "00"  # then the late original is approved and posted
        assert ledger.balance(card.pan) == before - 3300  # the race really happened
        assert report.second_pass is not None
        await report.second_pass
        await _drained(stack)
        assert ledger.balance(card.pan) == before
        assert _reconcile(stack).clean
    finally:
        await dead.close()
        await proxy.stop()
