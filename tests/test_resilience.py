"""Resilience of the real switch under network faults, injected by switch.testing.faultproxy.

The whole stack runs in-process on loopback (switch.testbed: HSM simulator, issuer simulator with
its SQLite ledger, switch with its SQLite journal).  One fault proxy sits between the simulated
terminal and the switch, another between the switch's "cup" issuer link and the issuer simulator.
Each scenario programs one fault, runs a real MACed, PIN-carrying sale and then asserts the final
state on both sides: the switch journal row and the issuer ledger postings/balance must agree
(a debit stands exactly when the journal says approved), and a reversal that had to happen has
reached the issuer (0420/0421 seen crossing the proxy, reversal queue empty, balance restored).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from switch import testbed
from switch.issuer_link import IssuerLink
from switch.sim_terminal import SimTerminal, SimTerminalError
from switch.testbed import MERCHANT_ID, Stack, terminal_id
from switch.testing.faultproxy import FaultProxy, h2h_mti, pos_mti

pytestmark = pytest.mark.timeout(60)

ISSUER_TIMEOUT = 1.0


class Rig:
    """A testbed stack with a proxy in front of the switch and one in front of the cup issuer."""

    def __init__(self, stack: Stack, tproxy: FaultProxy, iproxy: FaultProxy, link: IssuerLink) -> None:
        self.stack, self.tproxy, self.iproxy, self.link = stack, tproxy, iproxy, link
        self.issuer = stack.issuers["cup"]
        # pass-through observers (a zero delay changes nothing): count what crossed toward the issuer
        self.reversals_up = iproxy.up.delay(0, count=None, match=h2h_mti("0420", "0421"))

    def terminal(self, i: int = 0, *, via_proxy: bool = True) -> SimTerminal:
        port = self.tproxy.port if via_proxy else self.stack.port
        term = SimTerminal("127.0.0.1", port, terminal_id(i), MERCHANT_ID, testbed.test_tmk(i), timeout=10.0)
        self.stack.terminals.append(term)
        return term

    async def signed_on(self, i: int = 0, *, via_proxy: bool = True) -> SimTerminal:
        term = await self.terminal(i, via_proxy=via_proxy).connect()
        reply = await term.sign_on()
        assert reply.approved, reply.rc
        return term

    def balance(self, pan: str) -> int:
        return self.issuer.ledger.balance(pan)

    def debits(self, pan: str) -> list[Any]:
        """Ledger debits of ``pan`` that still stand (not reversed)."""
        return [p for p in self.issuer.ledger.postings(pan) if p.kind == "debit" and p.reversed_by is None]

    def journal_rows(self, tid: str, stan: str) -> list[sqlite3.Row]:
        db = sqlite3.connect(str(self.stack.workdir / "journal.db"))
        db.row_factory = sqlite3.Row
        try:
            return db.execute("SELECT * FROM txn WHERE terminal_id = ? AND stan = ? ORDER BY id",
                              (tid.strip(), stan)).fetchall()
        finally:
            db.close()

    async def settled(self) -> None:
        """Wait until the cup link has no reversal left to deliver."""
        for _ in range(300):
            if await self.link.pending_reversals() == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"reversals still pending: {await self.link.pending_reversals()}")


async def until(cond: Callable[[], Any], *, timeout: float = 8.0, what: str = "condition") -> None:
    """Poll ``cond`` (bounded) until it is truthy."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path):
    stack = await Stack.start(tmp_path, terminals=3, issuer_timeout=ISSUER_TIMEOUT)
    tproxy = FaultProxy("127.0.0.1", stack.port)
    iproxy = FaultProxy("127.0.0.1", stack.issuer_ports["cup"])
    await tproxy.start()
    await iproxy.start()
    # re-home the cup route on a link that goes through the issuer-side proxy
    await stack.links["cup"].close()
    link = IssuerLink("127.0.0.1", iproxy.port, name="cup", timeout=ISSUER_TIMEOUT, backoff=(0.05, 0.3),
                      reversal_retry=0.2, reversal_store=stack.journal.reversal_store())
    await link.start(wait=5.0)
    stack.links["cup"] = link
    stack.router.routes["cup"].link = link
    try:
        yield Rig(stack, tproxy, iproxy, link)
    finally:
        await stack.stop()
        await tproxy.stop()
        await iproxy.stop()


def sale_request(term: SimTerminal, card: Any, amount: int) -> dict[str, str]:
    """The 0200 swipe+PIN sale a terminal sends (built like SimTerminal.sale, kept for a later 0400)."""
    doc = term._base("0200", "000000", "22")
    doc.update({"4": f"{amount:012d}", "25": "00", "49": "156"})
    term._card_fields(doc, card, "swipe", card.pin, amount)
    return doc


# ---------------------------------------------------------------- faults between switch and issuer

async def test_issuer_reply_dropped_gives_98_and_reversal_restores_ledger(rig):
    card = rig.stack.card("cup", 0)
    before = rig.balance(card.pan)
    dropped = rig.iproxy.down.drop(match=h2h_mti("0210"))
    term = await rig.signed_on(0)
    reply = await term.sale(card, 1234, pin=card.pin)
    assert reply.rc == "98"
    assert dropped.hits == 1
    await rig.settled()
    assert rig.reversals_up.hits >= 1  # the 0420 really went upstream
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    [row] = rig.journal_rows(term.tid, reply.request["11"])
    assert row["state"] == "reversed" and row["response_code"] == "98"


async def test_late_issuer_reply_is_not_used_and_sale_is_reversed(rig):
    card = rig.stack.card("cup", 1)
    before = rig.balance(card.pan)
    late = rig.iproxy.down.delay(ISSUER_TIMEOUT * 1000 + 700, count=1, match=h2h_mti("0210"))
    term = await rig.signed_on(0)
    reply = await term.sale(card, 2000, pin=card.pin)
    assert reply.rc == "98"
    await late.wait()
    await asyncio.sleep(0.8)  # let the late 0210 arrive at the switch
    await rig.settled()
    assert rig.reversals_up.hits >= 1
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    [row] = rig.journal_rows(term.tid, reply.request["11"])
    assert row["state"] == "reversed"


async def test_issuer_connection_cut_with_request_in_flight(rig):
    """The issuer debits, the connection dies before the answer: 98, link reconnects, 0420 undoes it."""
    card = rig.stack.card("cup", 2)
    before = rig.balance(card.pan)
    cut = rig.iproxy.up.cut(after_bytes=65535, match=h2h_mti("0200"))  # whole request through, then cut
    term = await rig.signed_on(0)
    reply = await term.sale(card, 3000, pin=card.pin)
    assert reply.rc == "98"
    assert cut.hits == 1
    await until(lambda: rig.link.is_up, what="link back up")
    await rig.settled()
    assert rig.reversals_up.hits >= 1
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    # and the link serves new sales after the reconnect
    again = await term.sale(card, 100, pin=card.pin)
    assert again.approved and again.mac_ok
    assert rig.balance(card.pan) == before - 100


async def test_request_lost_before_issuer_reversal_answered_as_unknown(rig):
    card = rig.stack.card("cup", 3)
    before = rig.balance(card.pan)
    rig.iproxy.up.drop(match=h2h_mti("0200"))
    term = await rig.signed_on(0)
    reply = await term.sale(card, 500, pin=card.pin)
    assert reply.rc == "98"
    await rig.settled()  # the issuer answers the 0420 of an unknown original with 25: done
    assert rig.reversals_up.hits >= 1
    assert rig.balance(card.pan) == before and rig.issuer.ledger.postings(card.pan) == []


async def test_duplicated_issuer_reply_approves_once(rig):
    card = rig.stack.card("cup", 0)
    before = rig.balance(card.pan)
    dup = rig.iproxy.down.duplicate(match=h2h_mti("0210"))
    term = await rig.signed_on(0)
    reply = await term.sale(card, 700, pin=card.pin)
    assert reply.approved and reply.mac_ok
    assert dup.hits == 1
    follow = await term.sale(card, 300, pin=card.pin)  # the link is still in step after the stray copy
    assert follow.approved
    assert rig.balance(card.pan) == before - 1000 and len(rig.debits(card.pan)) == 2
    assert rig.reversals_up.hits == 0


async def test_issuer_down_answers_quickly_then_recovers(rig):
    card = rig.stack.card("cup", 1)
    before = rig.balance(card.pan)
    term = await rig.signed_on(0)
    await rig.iproxy.pause()  # the issuer host is down: connections refused
    await until(lambda: not rig.link.is_up, what="link down")
    reply = await term.sale(card, 800, pin=card.pin)
    assert reply.rc in ("91", "92")  # issuer unavailable / link down: nothing sent upstream
    assert rig.balance(card.pan) == before
    await rig.iproxy.resume()
    await until(lambda: rig.link.is_up, what="link back up")
    reply = await term.sale(card, 800, pin=card.pin)
    assert reply.approved
    assert rig.balance(card.pan) == before - 800


# ---------------------------------------------------------------- faults between terminal and switch

async def test_terminal_cut_after_request_is_journaled_consistently_then_reversed(rig):
    """The reply is lost with the connection: the approval stands on both sides until the terminal's 0400."""
    card = rig.stack.card("cup", 2)
    before = rig.balance(card.pan)
    cut = rig.tproxy.down.cut(match=pos_mti("0210"))
    term = await rig.signed_on(1)
    req = sale_request(term, card, 4321)
    with pytest.raises(SimTerminalError):
        await term.send(req, mac=True)
    assert cut.hits == 1
    await until(lambda: [r["state"] for r in rig.journal_rows(term.tid, req["11"])] == ["approved"],
                what="journal approved")
    assert rig.balance(card.pan) == before - 4321 and len(rig.debits(card.pan)) == 1  # consistent
    # the terminal comes back and reverses the unanswered sale (what POS terminals do, §7)
    await term.close()
    await term.connect()
    rev = await term.reversal(req)
    assert rev.rc == "00"
    await rig.settled()
    assert rig.reversals_up.hits >= 1
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    [row] = rig.journal_rows(term.tid, req["11"])
    assert row["state"] == "reversed"


async def test_terminal_gone_while_switch_processes_stays_consistent(rig):
    """The whole request reaches the switch, then the terminal's connection closes before the reply.

    Either the switch reverses the approval it cannot deliver, or it keeps it journaled as approved:
    both are acceptable as long as journal and ledger agree.  The terminal's later 0400 ends in
    "reversed" with the balance restored either way.
    """
    card = rig.stack.card("cup", 1)
    before = rig.balance(card.pan)
    rig.tproxy.up.cut(after_bytes=65535, match=pos_mti("0200"))
    term = await rig.signed_on(1)
    req = sale_request(term, card, 2468)
    with pytest.raises(SimTerminalError):
        await term.send(req, mac=True)

    def settled_state() -> str | None:
        rows = rig.journal_rows(term.tid, req["11"])
        return rows[0]["state"] if len(rows) == 1 and rows[0]["state"] in ("approved", "reversed") else None

    await until(settled_state, what="journal row approved or reversed")
    await asyncio.sleep(0.3)
    await rig.settled()
    if settled_state() == "approved":
        assert rig.balance(card.pan) == before - 2468 and len(rig.debits(card.pan)) == 1
    else:
        assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    await term.close()
    await term.connect()
    rev = await term.reversal(req)
    assert rev.rc == "00"
    await rig.settled()
    assert settled_state() == "reversed"
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)


async def test_terminal_cut_inside_request_leaves_no_trace_and_others_are_served(rig):
    card = rig.stack.card("cup", 3)
    before = rig.balance(card.pan)
    rig.tproxy.up.cut(after_bytes=20, match=pos_mti("0200"))
    victim = await rig.signed_on(1)
    req = sale_request(victim, card, 999)
    with pytest.raises(SimTerminalError):
        await victim.send(req, mac=True)
    other = await rig.signed_on(2)
    ok = await other.sale(card, 100, pin=card.pin)
    assert ok.approved and ok.mac_ok
    assert rig.journal_rows(victim.tid, req["11"]) == []
    assert rig.balance(card.pan) == before - 100


async def test_corrupted_mac_is_refused_and_nothing_is_debited(rig):
    card = rig.stack.card("cup", 0)
    before = rig.balance(card.pan)
    term = await rig.signed_on(0)
    flipped = rig.tproxy.up.corrupt(-1, match=pos_mti("0200"))  # last byte = last MAC byte
    reply = await term.sale(card, 321, pin=card.pin)
    assert flipped.hits == 1
    assert reply.rc == "A0" and reply.processing_request == "3"  # MAC error, sign on again
    assert [r["state"] for r in rig.journal_rows(term.tid, reply.request["11"])] in ([], ["declined"])
    assert rig.balance(card.pan) == before
    assert (await term.sign_on()).approved
    again = await term.sale(card, 321, pin=card.pin)
    assert again.approved and again.mac_ok
    assert rig.balance(card.pan) == before - 321


async def test_bytes_lost_inside_a_request_hurt_only_that_connection(rig):
    """Three bytes vanish inside one terminal's sale: that stream can no longer be framed.  The
    switch may answer 30 or drop the connection; it never debits the mangled sale and keeps serving
    the other terminal concurrently."""
    card, other_card = rig.stack.card("cup", 1), rig.stack.card("cup", 2)
    before = rig.balance(card.pan)
    victim = await rig.signed_on(0)
    other = await rig.signed_on(1, via_proxy=False)
    victim.timeout = 1.5
    rig.tproxy.up.drop_bytes(3, offset=40, match=pos_mti("0200"))
    req = sale_request(victim, card, 777)

    async def victim_sale() -> str:
        try:
            return (await victim.send(req, mac=True)).rc
        except (SimTerminalError, TimeoutError):
            return "no answer"

    outcome, served = await asyncio.gather(victim_sale(), other.sale(other_card, 50, pin=other_card.pin))
    assert outcome in ("30", "A0", "no answer"), outcome
    assert served.approved and served.mac_ok
    assert [r["state"] for r in rig.journal_rows(victim.tid, req["11"]) if r["state"] == "approved"] == []
    assert rig.balance(card.pan) == before
    # the victim reconnects and works again
    await victim.close()
    await victim.connect()
    assert (await victim.sale(card, 10, pin=card.pin)).approved


async def test_split_and_reordered_terminal_frames_are_processed(rig):
    card = rig.stack.card("cup", 0)
    before = rig.balance(card.pan)
    term = await rig.signed_on(0)
    split = rig.tproxy.up.split(chunk=7, gap_ms=2, count=1, match=pos_mti("0200"))
    r1 = await term.sale(card, 110, entry="chip", pin=card.pin)
    assert split.hits == 1 and r1.approved and r1.mac_ok
    held = rig.tproxy.up.reorder(count=1, match=pos_mti("0200"))
    r2, r3 = await asyncio.gather(term.sale(card, 220, pin=card.pin), term.sale(card, 330, pin=card.pin))
    assert held.hits == 1
    assert r2.approved and r3.approved and r2.rrn != r3.rrn
    assert rig.balance(card.pan) == before - 660


async def test_retransmitted_request_after_reply_is_answered_94_without_second_debit(rig):
    card = rig.stack.card("cup", 1)
    before = rig.balance(card.pan)
    term = await rig.signed_on(0)
    req = sale_request(term, card, 555)
    first = await term.send(req, mac=True)
    assert first.approved
    again = await term.send(req, mac=True)  # same STAN, same batch: a retransmission
    assert again.rc == "94"
    assert rig.balance(card.pan) == before - 555 and len(rig.debits(card.pan)) == 1


async def test_duplicated_request_in_flight_never_debits_twice(rig):
    card = rig.stack.card("cup", 2)
    before = rig.balance(card.pan)
    rig.tproxy.up.duplicate(match=pos_mti("0200"))
    term = await rig.signed_on(0)
    req = sale_request(term, card, 666)
    reply = await term.send(req, mac=True)
    assert reply.approved
    await asyncio.sleep(0.5)  # the copy's reply (if any) comes back too
    approved = [r for r in rig.journal_rows(term.tid, req["11"]) if r["state"] == "approved"]
    assert len(approved) == 1
    assert rig.balance(card.pan) == before - 666 and len(rig.debits(card.pan)) == 1


async def test_duplicated_upstream_request_is_answered_from_the_issuer_store(rig):
    """The 0200 reaches the issuer twice (switch-issuer link duplicates it): one debit only."""
    card = rig.stack.card("cup", 3)
    before = rig.balance(card.pan)
    dup = rig.iproxy.up.duplicate(match=h2h_mti("0200"))
    term = await rig.signed_on(0)
    reply = await term.sale(card, 444, pin=card.pin)
    assert reply.approved and dup.hits == 1
    follow = await term.sale(card, 56, pin=card.pin)  # the stray second 0210 did not desync the link
    assert follow.approved
    assert rig.balance(card.pan) == before - 500 and len(rig.debits(card.pan)) == 2


async def test_duplicated_terminal_reversal_restores_once(rig):
    card = rig.stack.card("cup", 0)
    before = rig.balance(card.pan)
    term = await rig.signed_on(2)
    sale = await term.sale(card, 1500, pin=card.pin)
    assert sale.approved
    rig.tproxy.up.duplicate(match=pos_mti("0400"))
    rev = await term.reversal(sale)
    assert rev.rc == "00"
    await asyncio.sleep(0.3)  # the copy is processed too
    await rig.settled()
    assert rig.balance(card.pan) == before and not rig.debits(card.pan)
    [row] = rig.journal_rows(term.tid, sale.request["11"])
    assert row["state"] == "reversed"
    credits = [p for p in rig.issuer.ledger.postings(card.pan) if p.kind != "debit"]
    assert len(credits) == 1  # one reversal posting, not two


# ---------------------------------------------------------------- everything at once

@pytest.mark.parametrize("seed", [7])
async def test_random_faults_keep_journal_and_ledger_consistent(rig, seed):
    """Concurrent terminals, random faults on both links: afterwards every approved journal row has
    exactly one standing issuer debit (same RRN and amount) and every other row has none.

    Faults: terminal side 0200 duplicated, 0210 cut; issuer side 0200 dropped, 0210 dropped or late
    (beyond the issuer timeout), 0430 dropped (the link repeats the reversal as 0421).  Terminals
    that lose their connection reconnect and reverse the unanswered sale, as POS terminals do.
    Requests toward the issuer are duplicated too (the issuer answers a copy from the first one).
    """
    import random

    rng = random.Random(seed)

    def sometimes(p: float, matcher):
        return lambda payload: matcher(payload) and rng.random() < p

    rules = [
        rig.tproxy.up.duplicate(count=None, match=sometimes(0.15, pos_mti("0200"))),
        rig.tproxy.down.cut(match=sometimes(0.12, pos_mti("0210"))),
        rig.tproxy.down.cut(match=sometimes(0.12, pos_mti("0210"))),
        rig.iproxy.up.drop(count=None, match=sometimes(0.1, h2h_mti("0200"))),
        rig.iproxy.up.duplicate(count=None, match=sometimes(0.15, h2h_mti("0200"))),
        rig.iproxy.down.drop(count=None, match=sometimes(0.1, h2h_mti("0210"))),
        rig.iproxy.down.delay(ISSUER_TIMEOUT * 1000 + 300, count=None, match=sometimes(0.1, h2h_mti("0210"))),
        rig.iproxy.down.drop(count=None, match=sometimes(0.3, h2h_mti("0430"))),
    ]
    cards = [rig.stack.card("cup", n) for n in range(4) if n != 4]
    before = {c.pan: rig.balance(c.pan) for c in cards}
    outcomes: list[str] = []

    async def terminal(i: int) -> None:
        term = await rig.signed_on(i)
        for k in range(6):
            card = cards[(i + k) % len(cards)]
            req = sale_request(term, card, 100 + 10 * i + k)
            try:
                reply = await term.send(req, mac=True)
                outcomes.append(reply.rc)
                continue
            except SimTerminalError:
                outcomes.append("cut")
            for _ in range(5):  # reconnect and reverse the unanswered sale (itself may be cut again)
                await term.close()
                await term.connect()
                try:
                    rev = await term.reversal(req)
                    assert rev.rc in ("00", "25"), rev.rc
                    break
                except SimTerminalError:
                    continue
            else:
                raise AssertionError("reversal never answered")

    await asyncio.gather(*(terminal(i) for i in range(3)))
    rig.tproxy.up.clear()
    rig.tproxy.down.clear()
    rig.iproxy.up.clear()
    rig.iproxy.down.clear()
    await asyncio.sleep(ISSUER_TIMEOUT + 0.5)  # late answers land, timed-out requests get their 0420
    await rig.settled()

    db = sqlite3.connect(str(rig.stack.workdir / "journal.db"))
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT * FROM txn WHERE txn_type = 'sale' AND terminal_id LIKE 'SIM%'").fetchall()
    db.close()
    standing = {}
    for c in cards:
        for p in rig.debits(c.pan):
            assert p.rrn not in standing, f"two standing debits for RRN {p.rrn}"
            standing[p.rrn] = abs(p.amount)
    approved = {r["rrn"]: r["amount"] for r in rows if r["state"] == "approved"}
    assert standing == approved, (outcomes, [(r["stan"], r["state"], r["response_code"]) for r in rows])
    assert sum(before[c.pan] - rig.balance(c.pan) for c in cards) == sum(approved.values())
    assert len(outcomes) == 18 and set(outcomes) - {"00", "98", "cut"} == set(), outcomes
    assert "00" in outcomes and sum(r.hits for r in rules) > 0  # both paths were exercised


async def test_void_answer_lost_keeps_the_sale_and_undoes_the_void(rig):
    """The issuer approves the void but its answer is lost: 98 to the terminal, the link reverses the
    void upstream (0420), so the sale's debit stands again and the journal still shows it approved."""
    card = rig.stack.card("cup", 1)
    before = rig.balance(card.pan)
    term = await rig.signed_on(0)
    sale = await term.sale(card, 2500, pin=card.pin)
    assert sale.approved
    rig.iproxy.down.drop(match=h2h_mti("0210"))
    void = await term.void(card, sale)
    assert void.rc == "98"
    await rig.settled()
    assert rig.reversals_up.hits >= 1
    assert rig.balance(card.pan) == before - 2500 and len(rig.debits(card.pan)) == 1
    assert [r["state"] for r in rig.journal_rows(term.tid, sale.request["11"])] == ["approved"]
    assert [r["state"] for r in rig.journal_rows(term.tid, void.request["11"])] == ["reversed"]
    again = await term.void(card, sale)  # the terminal may try the void again: it works now
    assert again.approved
    assert rig.balance(card.pan) == before


async def test_preauth_answer_lost_releases_the_hold(rig):
    card = rig.stack.card("cup", 2)
    ledger = rig.issuer.ledger
    available = ledger.available(card.pan)
    rig.iproxy.down.drop(match=h2h_mti("0110"))
    term = await rig.signed_on(0)
    reply = await term.preauth(card, 5000, pin=card.pin)
    assert reply.rc == "98"
    await rig.settled()
    assert rig.reversals_up.hits >= 1
    assert ledger.available(card.pan) == available  # the hold the issuer placed is released
    [row] = rig.journal_rows(term.tid, reply.request["11"])
    assert row["state"] == "reversed"


async def test_lost_settlement_answer_retried_balances_again(rig):
    """The 0510 is lost; the terminal sends its 0500 again and gets the same balanced answer."""
    from switch.sim_terminal import settlement_balanced

    card = rig.stack.card("cup", 3)
    term = await rig.signed_on(2)
    for amount in (120, 340):
        assert (await term.sale(card, amount, pin=card.pin)).approved
    lost = rig.tproxy.down.drop(match=pos_mti("0510"))
    term.timeout = 1.5
    with pytest.raises(TimeoutError):
        await term.settle()
    assert lost.hits == 1
    term.timeout = 10.0
    again = await term.settle()
    assert again.approved and settlement_balanced(again) is True
    assert again.doc["48"][:15] == f"{460:012d}002"
