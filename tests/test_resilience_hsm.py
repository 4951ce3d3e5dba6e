"""Resilience of the switch when its HSM link misbehaves (fault proxy between switch and HSM).

The switch's HSM client is re-pointed at a fault proxy in front of the real HSM simulator.  The HSM
wire is a 2-byte length, a 4-byte header, then a 2-letter command (``CA`` PIN translation, ``M8``
verify MAC, ``M6`` generate MAC; replies ``CB``, ``M9``, ``M7``).  For each fault: the terminal gets
a definite answer, nothing is debited that the journal does not show as approved, and the switch
serves the next sale normally once the fault is gone.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from switch import testbed
from switch.hsm_client import HsmClient
from switch.sim_terminal import SimTerminal
from switch.testbed import MERCHANT_ID, Stack, terminal_id
from switch.testing.faultproxy import FaultProxy, hsm_cmd

pytestmark = pytest.mark.timeout(60)

HSM_TIMEOUT = 1.0


@pytest.fixture
async def rig(tmp_path):
    stack = await Stack.start(tmp_path, terminals=2, issuer_timeout=3.0)
    proxy = FaultProxy("127.0.0.1", stack.hsm_port)
    await proxy.start()
    client = await HsmClient.connect("127.0.0.1", proxy.port, timeout=HSM_TIMEOUT, reconnect_delay=0.05)
    assert stack.server is not None
    stack.server.processor.services.security.hsm = client
    try:
        yield stack, proxy
    finally:
        await client.close()
        await stack.stop()
        await proxy.stop()


async def signed_on(stack: Stack, i: int = 0) -> SimTerminal:
    term = SimTerminal("127.0.0.1", stack.port, terminal_id(i), MERCHANT_ID, testbed.test_tmk(i), timeout=10.0)
    stack.terminals.append(term)
    await term.connect()
    assert (await term.sign_on()).approved
    return term


def journal_states(stack: Stack, tid: str, stan: str) -> list[str]:
    db = sqlite3.connect(str(stack.workdir / "journal.db"))
    try:
        return [r[0] for r in db.execute("SELECT state FROM txn WHERE terminal_id = ? AND stan = ?",
                                         (tid.strip(), stan))]
    finally:
        db.close()


def standing_debits(stack: Stack, pan: str) -> list:
    return [p for p in stack.issuers["cup"].ledger.postings(pan) if p.kind == "debit" and p.reversed_by is None]


async def test_pin_translation_answer_lost_gives_definite_decline_and_no_debit(rig):
    stack, proxy = rig
    card = stack.card("cup", 0)
    before = stack.issuers["cup"].ledger.balance(card.pan)
    term = await signed_on(stack)
    lost = proxy.down.drop(match=hsm_cmd("CB"))
    reply = await term.sale(card, 1000, pin=card.pin)
    assert lost.hits == 1
    assert reply.rc == "96"  # system error: the PIN could not be translated, nothing went upstream
    assert journal_states(stack, term.tid, reply.request["11"]) in ([], ["declined"])
    assert stack.issuers["cup"].ledger.balance(card.pan) == before and not standing_debits(stack, card.pan)
    again = await term.sale(card, 1000, pin=card.pin)  # the HSM client is in step again
    assert again.approved and again.mac_ok


async def test_mac_verification_unanswered_then_connection_cut(rig):
    stack, proxy = rig
    card = stack.card("cup", 1)
    before = stack.issuers["cup"].ledger.balance(card.pan)
    term = await signed_on(stack)
    cut = proxy.up.cut(match=hsm_cmd("M8"))  # the verify-MAC request kills the HSM connection
    reply = await term.sale(card, 700, pin=card.pin)
    assert cut.hits == 1
    assert reply.rc == "96"
    assert stack.issuers["cup"].ledger.balance(card.pan) == before
    again = await term.sale(card, 700, pin=card.pin)  # the client reconnects by itself
    assert again.approved and again.mac_ok
    assert stack.issuers["cup"].ledger.balance(card.pan) == before - 700


async def test_reply_mac_lost_after_issuer_approval_stays_consistent(rig):
    """The issuer approved, then the HSM never answers the reply-MAC request: the terminal cannot
    trust the approval (no valid MAC).  Journal and ledger must agree, and the terminal's 0400
    (39 = A0, what terminals send on a bad reply MAC) restores the balance."""
    stack, proxy = rig
    card = stack.card("cup", 2)
    before = stack.issuers["cup"].ledger.balance(card.pan)
    term = await signed_on(stack)
    lost = proxy.down.drop(match=hsm_cmd("M7"))
    reply = await term.sale(card, 900, pin=card.pin)
    assert lost.hits == 1
    assert not (reply.approved and reply.mac_ok)  # never a trustworthy approval
    await asyncio.sleep(0.2)
    states = journal_states(stack, term.tid, reply.request["11"])
    debits = standing_debits(stack, card.pan)
    assert (states == ["approved"] and len(debits) == 1) or (states in (["reversed"], ["declined"]) and not debits) \
        or (states == ["reversed"] and len(debits) == 1), (states, debits)  # last: 0420 still queued
    for _ in range(3):  # terminals repeat a 0400 until it is answered 00/25
        rev = await term.reversal(reply, reason="A0")
        if rev.rc in ("00", "25"):
            break
    assert rev.rc in ("00", "25")
    for _ in range(250):
        if not standing_debits(stack, card.pan) and await stack.links["cup"].pending_reversals() == 0:
            break
        await asyncio.sleep(0.02)
    assert journal_states(stack, term.tid, reply.request["11"]) in (["reversed"], ["declined"])
    assert stack.issuers["cup"].ledger.balance(card.pan) == before and not standing_debits(stack, card.pan)


async def test_slow_hsm_answers_arrive_in_order(rig):
    stack, proxy = rig
    card = stack.card("cup", 3)
    term = await signed_on(stack)
    proxy.down.delay(150, count=None)  # every HSM answer 150 ms late (below the client timeout)
    replies = await asyncio.gather(*(term.sale(card, 10 + k, pin=card.pin) for k in range(4)))
    assert all(r.approved and r.mac_ok for r in replies), [r.rc for r in replies]


async def test_one_lost_hsm_answer_costs_only_its_own_request(rig):
    stack, proxy = rig
    card = stack.card("cup", 0)
    term = await signed_on(stack, 1)
    proxy.down.drop(match=hsm_cmd("M7"))  # the answer to the reply-MAC request of the first sale
    first = await term.sale(card, 100, pin=card.pin)
    assert first.mac_ok is False or not first.approved
    second = await term.sale(card, 100, pin=card.pin)  # no fault any more: its M8 is the next request
    assert second.approved and second.mac_ok
