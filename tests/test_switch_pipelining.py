"""The sale path's overlapped steps, end to end over loopback TCP.

* The PIN translation (CA) is sent to the HSM together with the MAC check (M8), and the flow uses
  that answer instead of translating again; a bad MAC still forwards nothing.
* The approval's journal commit runs while the reply MAC (M6) is computed, but the reply is written
  only after the commit; a commit that fails turns the reply into 96 and the issuer's approval is
  reversed, as is one whose flow fails unexpectedly after the issuer answered.
"""

from __future__ import annotations

import asyncio

import pytest

from switch.journal import JournalError
from switch.testbed import MERCHANT_ID, Stack, terminal_id


@pytest.fixture
async def stack(tmp_path):
    s = await Stack.start(tmp_path, terminals=2, issuer_timeout=1.0)
    try:
        yield s
    finally:
        await s.stop()


class _Recorder:
    """Wraps the switch's Security object and records the order of HSM submissions and answers."""

    def __init__(self, security):
        self.inner = security
        self.events: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _wrap(self, name, pending):
        events = self.events
        events.append(f"{name}:sent")

        class _Waiter:
            def __await__(self_inner):
                try:
                    return (yield from pending.__await__())
                finally:
                    events.append(f"{name}:answered")

            def discard(self_inner):
                events.append(f"{name}:discarded")
                pending.discard()

        return _Waiter()

    def verify_mac_submit(self, *a):
        return self._wrap("M8", self.inner.verify_mac_submit(*a))

    def translate_pin_submit(self, *a):
        return self._wrap("CA", self.inner.translate_pin_submit(*a))

    def generate_mac_submit(self, *a):
        return self._wrap("M6", self.inner.generate_mac_submit(*a))


def _record(stack) -> _Recorder:
    svc = stack.server.processor.services
    rec = _Recorder(svc.security)
    svc.security = rec
    return rec


async def test_pin_translation_travels_with_the_mac_check(stack):
    term = await stack.connected_terminal(0)
    rec = _record(stack)
    card = stack.card()
    ledger = stack.issuers["cup"].ledger
    before = ledger.balance(card.pan)
    reply = await term.sale(card, 1234, pin=card.pin)
    assert reply.rc == "00" and reply.mac_ok
    # CA leaves before the M8 answer is awaited, and is translated once only (the flow reuses it)
    assert rec.events[:2] == ["M8:sent", "CA:sent"]
    assert rec.events.count("CA:sent") == 1
    assert "CA:discarded" not in rec.events
    assert rec.events[-2:] == ["M6:sent", "M6:answered"]
    # the issuer verified the translated PIN block and debited the card
    assert ledger.balance(card.pan) == before - 1234


async def test_wrong_pin_still_declined_through_the_prefetched_translation(stack):
    term = await stack.connected_terminal(0)
    rec = _record(stack)
    card = stack.card()
    reply = await term.sale(card, 100, pin="999999" if card.pin != "999999" else "111111")
    assert reply.rc == "55"
    assert rec.events.count("CA:sent") == 1


async def test_bad_mac_discards_the_prefetched_translation_and_forwards_nothing(stack):
    term = await stack.connected_terminal(0)
    rec = _record(stack)
    card = stack.card()
    ledger = stack.issuers["cup"].ledger
    before = ledger.balance(card.pan)
    doc = term._base("0200", "000000", "22")
    doc.update({"4": f"{100:012d}", "25": "00", "49": "156"})
    term._card_fields(doc, card, "swipe", card.pin, 100)
    body = bytearray(term.encode(doc, mac=True))
    body[-1] ^= 0x01  # the MAC no longer matches
    reply = await term.send(doc, raw_body=bytes(body))
    assert reply.rc == "A0"
    assert rec.events[:2] == ["M8:sent", "CA:sent"]
    assert "CA:discarded" in rec.events
    assert await stack.journal.find_by_trace(terminal_id(0), MERCHANT_ID, None, doc["11"]) is None
    assert ledger.balance(card.pan) == before


async def test_reply_waits_for_the_approval_commit(stack):
    term = await stack.connected_terminal(0)
    journal = stack.journal
    gate = asyncio.Event()
    real = journal.commit_approval_soon
    started = asyncio.Event()

    async def slow_commit(*a, **kw):
        started.set()
        await gate.wait()
        return await real(*a, **kw)

    journal.commit_approval_soon = lambda *a, **kw: asyncio.ensure_future(slow_commit(*a, **kw))
    rec = _record(stack)
    card = stack.card()
    sale = asyncio.ensure_future(term.sale(card, 500, pin=card.pin))
    await asyncio.wait_for(started.wait(), 5)
    # the reply MAC is asked for meanwhile, but nothing is written to the terminal before the commit
    for _ in range(100):
        if "M6:sent" in rec.events:
            break
        await asyncio.sleep(0.01)
    assert "M6:sent" in rec.events
    await asyncio.sleep(0.1)
    assert not sale.done()
    gate.set()
    reply = await asyncio.wait_for(sale, 5)
    assert reply.rc == "00"
    row = await journal.find_by_rrn(terminal_id(0), MERCHANT_ID, reply.doc["37"])
    assert row is not None and row.state == "approved"


async def test_failed_commit_turns_the_approval_into_96(stack):
    term = await stack.connected_terminal(0)
    journal = stack.journal

    async def broken_commit(*a, **kw):
        raise JournalError("journal: disk full (test)")

    journal.commit_approval_soon = lambda *a, **kw: asyncio.ensure_future(broken_commit(*a, **kw))
    card = stack.card()
    ledger = stack.issuers["cup"].ledger
    before = ledger.balance(card.pan)
    reply = await term.sale(card, 700, pin=card.pin)
    assert reply.rc == "96"
    assert "64" in reply.doc  # the 96 is MACed like any reply to a MACed request
    # the issuer approved and debited; the switch could not record it, so it reverses the debit
    assert await _eventually(lambda: ledger.balance(card.pan) == before)
    row = await stack.journal.find_by_trace(terminal_id(0), MERCHANT_ID, None, reply.request["11"])
    assert row is not None and row.state == "reversed" and row.response_code == "96"


async def test_unexpected_failure_after_the_issuer_answered_is_reversed(stack):
    term = await stack.connected_terminal(0)
    link = stack.links["cup"]
    real = link.request

    async def answered_then_failed(*a, **kw):
        await real(*a, **kw)  # the issuer authorises and debits...
        raise RuntimeError("bug after the answer (test)")  # ...and the switch trips over its own feet

    link.request = answered_then_failed
    card = stack.card()
    ledger = stack.issuers["cup"].ledger
    before = ledger.balance(card.pan)
    reply = await term.sale(card, 900, pin=card.pin)
    assert reply.rc == "96"
    assert await _eventually(lambda: ledger.balance(card.pan) == before)
    row = await stack.journal.find_by_trace(terminal_id(0), MERCHANT_ID, None, reply.request["11"])
    assert row is not None and row.state == "reversed"


async def _eventually(pred, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()
