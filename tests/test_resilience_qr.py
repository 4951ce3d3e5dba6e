"""Resilience of QR payments (merchant scans the customer's code) under faults on the wallet link.

The in-process testbed's wallet link is re-pointed through a fault proxy in front of the wallet
simulator.  For each fault the terminal gets a definite answer and the wallet ledger agrees with the
switch journal: an approved QR sale has exactly one standing wallet debit, anything else none.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from issuer_sim.wallets import WalletUser
from switch import testbed
from switch.issuer_link import IssuerLink
from switch.sim_terminal import SimTerminal
from switch.testbed import MERCHANT_ID, Stack, qr_code, terminal_id
from switch.testing.faultproxy import FaultProxy, h2h_mti

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 1.0
AUTO_USER = "134500000001"  # confirms at once
PASSWORD_USER = "134500000002"  # confirms after 0.2 s (the switch polls)


class QrRig:
    def __init__(self, stack: Stack, proxy: FaultProxy, link: IssuerLink) -> None:
        self.stack, self.proxy, self.link = stack, proxy, link
        self.wallet = stack.issuers["wallets"]
        self.cancels = proxy.up.delay(0, count=None, match=h2h_mti("0420", "0421"))  # observer

    def balance(self, prefix: str) -> int:
        return self.wallet.ledger.balance(WalletUser(prefix).account_id)

    def debits(self, prefix: str) -> list:
        return [p for p in self.wallet.ledger.postings(WalletUser(prefix).account_id)
                if p.kind == "debit" and p.reversed_by is None]

    def journal(self, tid: str, stan: str) -> list[str]:
        db = sqlite3.connect(str(self.stack.workdir / "journal.db"))
        try:
            return [r[0] for r in db.execute("SELECT state FROM txn WHERE terminal_id = ? AND stan = ?",
                                             (tid.strip(), stan))]
        finally:
            db.close()

    async def terminal(self, i: int = 0) -> SimTerminal:
        term = SimTerminal("127.0.0.1", self.stack.port, terminal_id(i), MERCHANT_ID, testbed.test_tmk(i),
                           timeout=15.0)
        self.stack.terminals.append(term)
        await term.connect()
        assert (await term.sign_on()).approved
        return term

    async def quiet(self) -> None:
        for _ in range(300):
            if await self.link.pending_reversals() == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("wallet cancels still pending")


@pytest.fixture
async def rig(tmp_path):
    stack = await Stack.start(tmp_path, terminals=2, issuer_timeout=TIMEOUT, qr_wait=3.0)
    proxy = FaultProxy("127.0.0.1", stack.issuer_ports["wallets"])
    await proxy.start()
    await stack.links["wallets"].close()
    link = IssuerLink("127.0.0.1", proxy.port, name="wallets", timeout=TIMEOUT, backoff=(0.05, 0.3),
                      reversal_retry=0.2, reversal_store=stack.journal.reversal_store())
    await link.start(wait=5.0)
    stack.links["wallets"] = link
    stack.router.routes["wallets"].link = link
    try:
        yield QrRig(stack, proxy, link)
    finally:
        await stack.stop()
        await proxy.stop()


async def test_pay_answer_lost_cancels_the_paid_order(rig):
    before = rig.balance(AUTO_USER)
    lost = rig.proxy.down.drop(match=h2h_mti("0210"))
    term = await rig.terminal()
    reply = await term.qr_sale(qr_code(AUTO_USER), 880)
    assert lost.hits == 1
    assert reply.rc == "98"
    await rig.quiet()
    assert rig.cancels.hits >= 1
    assert rig.balance(AUTO_USER) == before and not rig.debits(AUTO_USER)  # paid, then refunded
    assert rig.journal(term.tid, reply.request["11"]) in (["reversed"], ["declined"])


async def test_duplicated_pay_request_debits_once(rig):
    before = rig.balance(AUTO_USER)
    rig.proxy.up.duplicate(match=h2h_mti("0200"))
    term = await rig.terminal()
    reply = await term.qr_sale(qr_code(AUTO_USER), 990)
    assert reply.approved and reply.mac_ok
    await asyncio.sleep(0.2)
    assert rig.balance(AUTO_USER) == before - 990 and len(rig.debits(AUTO_USER)) == 1
    assert rig.journal(term.tid, reply.request["11"]) == ["approved"]


async def test_lost_poll_answers_end_consistently(rig):
    """The customer confirms by password while the switch polls; some poll answers are lost."""
    before = rig.balance(PASSWORD_USER)
    lost = rig.proxy.down.drop(count=2, match=lambda p: p[:4] == b"0210" and b"531000" in p[:40])
    term = await rig.terminal(1)
    reply = await term.qr_sale(qr_code(PASSWORD_USER), 1230)
    assert reply.rc in ("00", "98"), reply.rc
    await asyncio.sleep(0.3)
    await rig.quiet()
    state = rig.journal(term.tid, reply.request["11"])
    if reply.approved:
        assert state == ["approved"] and reply.mac_ok
        assert rig.balance(PASSWORD_USER) == before - 1230 and len(rig.debits(PASSWORD_USER)) == 1
    else:
        assert state in (["reversed"], ["declined"])
        assert rig.balance(PASSWORD_USER) == before and not rig.debits(PASSWORD_USER)
    assert lost.hits >= 1


async def test_wallet_down_then_back(rig):
    before = rig.balance(AUTO_USER)
    term = await rig.terminal()
    await rig.proxy.pause()  # the wallet host is down: connections refused
    for _ in range(200):
        if not rig.link.is_up:
            break
        await asyncio.sleep(0.02)
    down = await term.qr_sale(qr_code(AUTO_USER), 100)
    assert down.rc in ("91", "92")
    await rig.proxy.resume()
    for _ in range(300):
        if rig.link.is_up:
            break
        await asyncio.sleep(0.02)
    ok = await term.qr_sale(qr_code(AUTO_USER), 100)
    assert ok.approved
    assert rig.balance(AUTO_USER) == before - 100
