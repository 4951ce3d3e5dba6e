"""switch.issuer_link.IssuerLink against a real issuer_sim over loopback TCP.

Timeouts (latency and dropped answers) raise IssuerTimeout and queue a 0420 that is retried until the
issuer acknowledges it (the ledger proves the debit was undone exactly once); reconnect after the
issuer restarts; echo on idle links; link down -> IssuerUnavailable; coalesced writes; metrics hooks.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from issuer_sim import accounts as accounts_mod
from issuer_sim.ledger import Ledger
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink, IssuerTimeout, IssuerUnavailable, MemoryReversalStore

PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"
CONFIG = {"accounts": [{"pan": PAN, "expiry": EXP, "balance": 100_000}]}
_rrn = iter(range(1, 10**6))


def sale(amount: int = 1000, kind: str = "sale") -> dict[str, str]:
    return h2h.financial_request(kind, terminal_id="T0000009", merchant_id="898310048990009",
                                 rrn=f"{next(_rrn):012d}", amount=amount, pan=PAN)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def link_state(self, link, up):
        self.events.append(("state", link, up))

    def upstream_latency(self, link, mti, seconds, code):
        self.events.append(("latency", link, mti, code))

    def pending_reversals(self, link, n):
        self.events.append(("pending", link, n))

    def timeout(self, link):
        self.events.append(("timeout", link))


async def eventually(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.fixture
async def issuer():
    srv = await start_issuer(accounts_mod.parse(CONFIG))
    yield srv
    await srv.close(close_ledger=True)


async def test_timeout_queues_reversal_retried_until_acked(issuer):
    # the issuer posts the debit but the answer is lost, and the first two 0420s are lost too
    issuer.faults.add(action="drop_response", kind="sale", times=1)
    issuer.faults.add(action="drop", kind="reversal", times=2)
    rec = Recorder()
    link = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=0.2, reversal_retry=0.05,
                            metrics=rec).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(sale(4_000))
        assert issuer.ledger.balance(PAN) == 96_000          # the issuer did post it
        assert await link.pending_reversals() == 1

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert issuer.ledger.balance(PAN) == 100_000          # undone ...
        kinds = [p.kind for p in issuer.ledger.postings(PAN)]
        assert kinds == ["debit", "reversal"]                 # ... exactly once
        assert issuer.faults.rules[1].hits == 2               # two 0420s were dropped first
        store = link.reversals
        assert isinstance(store, MemoryReversalStore)
        (_, code, rev), = store.acked
        assert code == "00" and rev["t"] == "0420" and rev["39"] == "98"
        assert "52" not in rev and "35" not in rev
        assert ("timeout", "cup") in rec.events and ("pending", "cup", 0) in rec.events
    finally:
        await link.close()


async def test_late_answer_times_out_and_is_dropped(issuer):
    issuer.faults.add(action="delay", delay=0.4, kind="sale", times=1)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1, reversal_retry=0.05).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(sale(2_500))
        await asyncio.sleep(0.5)                               # the late 0210 arrives and is ignored

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert issuer.ledger.balance(PAN) == 100_000
        # the link still works
        assert (await link.request(sale(100)))["39"] == "00"
    finally:
        await link.close()


async def test_balance_inquiry_timeout_is_not_reversed(issuer):
    issuer.faults.add(action="drop", kind="balance")
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(h2h.financial_request("balance", terminal_id="T1", merchant_id="M1",
                                                     rrn="000000000001", pan=PAN))
        assert await link.pending_reversals() == 0
    finally:
        await link.close()


async def test_unavailable_when_down_and_reconnect_after_restart(tmp_path):
    db = tmp_path / "ledger.db"
    srv = await start_issuer(accounts_mod.parse(CONFIG), ledger=db)
    port = srv.port
    rec = Recorder()
    link = await IssuerLink("127.0.0.1", port, timeout=1, backoff=(0.02, 0.1), metrics=rec).start(wait=2)
    try:
        assert (await link.request(sale(1_000)))["39"] == "00"
        await srv.close(close_ledger=True)

        async def down():
            return not link.is_up
        await eventually(down)
        with pytest.raises(IssuerUnavailable):
            await link.request(sale(1_000))
        srv = await start_issuer(accounts_mod.parse(CONFIG), port=port, ledger=db)
        await link.wait_up(5)
        assert link.connects == 2
        assert (await link.request(sale(2_000)))["39"] == "00"
        assert srv.ledger.balance(PAN) == 97_000             # the ledger survived the restart
        ups = [e[2] for e in rec.events if e[0] == "state"]
        assert ups.count(True) == 2 and ups[-1] is True and False in ups[ups.index(True):]
    finally:
        await link.close()
        await srv.close(close_ledger=True)


async def test_reversal_waits_for_issuer_restart(tmp_path):
    db = tmp_path / "ledger.db"
    srv = await start_issuer(accounts_mod.parse(CONFIG), ledger=db)
    port = srv.port
    link = await IssuerLink("127.0.0.1", port, timeout=0.2, backoff=(0.02, 0.1),
                            reversal_retry=0.05).start(wait=2)
    try:
        srv.faults.add(action="drop_response", kind="sale")
        with pytest.raises(IssuerTimeout):
            await link.request(sale(3_000))
        await srv.close(close_ledger=True)                    # issuer dies with the 0420 pending
        await asyncio.sleep(0.2)
        assert await link.pending_reversals() == 1
        led = Ledger(db)
        assert led.balance(PAN) == 97_000
        led.close()
        srv = await start_issuer(accounts_mod.parse(CONFIG), port=port, ledger=db)

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert srv.ledger.balance(PAN) == 100_000
    finally:
        await link.close()
        await srv.close(close_ledger=True)


async def test_connection_drop_with_request_in_flight_is_a_timeout(issuer):
    issuer.faults.add(action="delay", delay=5, kind="sale", times=1)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=3, backoff=(0.02, 0.1),
                            reversal_retry=0.05).start(wait=2)
    try:
        task = asyncio.ensure_future(link.request(sale(500)))
        await asyncio.sleep(0.1)
        assert link.in_flight == 1
        for conn in list(issuer._conns):
            conn.transport.abort()
        with pytest.raises(IssuerTimeout):
            await task
        assert issuer.ledger.balance(PAN) == 99_500            # posted before the connection died

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)                                 # reconnected and reversed
        assert issuer.ledger.balance(PAN) == 100_000
    finally:
        await link.close()


async def test_echo_on_idle_link(issuer):
    seen: list[str] = []
    orig = issuer.host.process

    async def spy(msg, kind=None):
        seen.append(msg["t"])
        return await orig(msg, kind)
    issuer.host.process = spy
    link = await IssuerLink("127.0.0.1", issuer.port, echo_interval=0.05, echo_timeout=1).start(wait=2)
    try:
        async def echoed():
            return seen.count("0800") >= 2
        await eventually(echoed)
        assert link.is_up and link.connects == 1
    finally:
        await link.close()


async def test_echo_timeout_reconnects(issuer):
    # echoes are exempt from fault rules: swallow 0800 in the host instead
    orig = issuer.host.handle

    async def no_echo(msg):
        if msg.get("t") == "0800":
            await asyncio.sleep(10)
        return await orig(msg)
    issuer.host.handle = no_echo
    link = await IssuerLink("127.0.0.1", issuer.port, echo_interval=0.05, echo_timeout=0.1,
                            backoff=(0.02, 0.05)).start(wait=2)
    try:
        async def reconnected():
            return link.connects >= 2
        await eventually(reconnected)
    finally:
        await link.close()


async def test_writes_are_coalesced(issuer):
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    try:
        transport = link._proto.transport
        writes: list[int] = []
        real = transport.write

        def counting(data):
            writes.append(len(data))
            return real(data)
        transport.write = counting
        resps = await asyncio.gather(*(link.request(sale(10 + i)) for i in range(20)))
        assert all(r["39"] == "00" for r in resps)
        assert len({r["11"] for r in resps}) == 20             # distinct upstream STANs
        assert len(writes) == 1                                # 20 requests, one write
        assert issuer.ledger.balance(PAN) == 100_000 - sum(10 + i for i in range(20))
    finally:
        await link.close()


async def test_many_concurrent_requests_match_their_answers(issuer):
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    try:
        reqs = [sale(1 + i) for i in range(50)]
        resps = await asyncio.gather(*(link.request(r) for r in reqs))
        for r, s in zip(reqs, resps, strict=True):
            assert (s["37"], s["4"]) == (r["37"], r["4"])
    finally:
        await link.close()


def test_link_and_issuer_under_uvloop():
    """The switch runs on uvloop: the same timeout + reversal scenario on a uvloop loop."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario():
        srv = await start_issuer(accounts_mod.parse(CONFIG))
        srv.faults.add(action="drop_response", kind="sale", times=1)
        link = await IssuerLink("127.0.0.1", srv.port, timeout=0.2, reversal_retry=0.05).start(wait=2)
        try:
            with pytest.raises(IssuerTimeout):
                await link.request(sale(1_234))

            async def done():
                return await link.pending_reversals() == 0
            await eventually(done)
            assert srv.ledger.balance(PAN) == 100_000
            assert (await link.request(sale(1)))["39"] == "00"
            return type(asyncio.get_running_loop()).__module__
        finally:
            await link.close()
            await srv.close(close_ledger=True)

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()).startswith("uvloop")
    finally:
        loop.close()


async def test_switch_metrics_are_fed(issuer):
    from switch.metrics import SwitchMetrics

    m = SwitchMetrics()
    issuer.faults.add(action="drop", kind="sale", times=1)
    issuer.faults.add(action="drop", kind="reversal", times=1000)
    link = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=0.1, reversal_retry=0.05,
                            metrics=m).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(sale(5))
        text = m.exposition().decode()
        assert 'posswitch_issuer_link_up{issuer="cup"} 1.0' in text
        assert "posswitch_pending_reversals 1.0" in text
        issuer.faults.clear()
        assert (await link.request(sale(6), timeout=2))["39"] == "00"

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        text = m.exposition().decode()
        assert "posswitch_pending_reversals 0.0" in text
        assert 'posswitch_issuer_seconds_count{issuer="cup"} 1.0' in text
    finally:
        await link.close()
    assert 'posswitch_issuer_link_up{issuer="cup"} 0.0' in m.exposition().decode()


async def test_durable_reversal_survives_switch_restart(issuer, tmp_path):
    """With the journal-backed store, a 0420 queued before the switch stops is sent by the next link."""
    journal_mod = pytest.importorskip("switch.journal")
    key = b"k" * 32
    journal = await journal_mod.Journal.open(str(tmp_path / "journal.db"), key)
    issuer.faults.add(action="drop_response", kind="sale", times=1)
    issuer.faults.add(action="drop", kind="reversal")          # the first switch never gets its 0430
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1, reversal_retry=0.05,
                            reversal_store=journal.reversal_store()).start(wait=2)
    with pytest.raises(IssuerTimeout):
        await link.request(sale(2_222))
    await asyncio.sleep(0.2)
    await link.close()
    await journal.close()
    assert issuer.ledger.balance(PAN) == 100_000 - 2_222

    issuer.faults.clear()
    journal = await journal_mod.Journal.open(str(tmp_path / "journal.db"), key)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=1, reversal_retry=0.05,
                            reversal_store=journal.reversal_store()).start(wait=2)
    try:
        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert issuer.ledger.balance(PAN) == 100_000
        assert PAN.encode() not in (tmp_path / "journal.db").read_bytes()
    finally:
        await link.close()
        await journal.close()


async def test_many_pending_reversals_drain_after_outage(issuer):
    """50 timed-out sales during an outage of the answers: every debit is undone exactly once."""
    issuer.faults.add(action="drop_response", kind="sale", times=50)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.2, reversal_retry=0.05).start(wait=2)
    try:
        results = await asyncio.gather(*(link.request(sale(10)) for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, IssuerTimeout) for r in results)

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert issuer.ledger.balance(PAN) == 100_000
        postings = issuer.ledger.postings(PAN)
        assert sum(p.kind == "reversal" for p in postings) == 50 == sum(p.kind == "debit" for p in postings)
    finally:
        await link.close()


async def test_configured_latency_and_amount_rules():
    """Faults from the accounts file: amount ending in 13 declines 05 (first match only once), a global
    latency longer than the link timeout makes every request time out."""
    doc = dict(CONFIG, faults=[{"amount_suffix": "13", "action": "decline", "code": "05", "times": 1}])
    srv = await start_issuer(accounts_mod.parse(doc))
    link = await IssuerLink("127.0.0.1", srv.port, timeout=2, reversal_retry=0.05).start(wait=2)
    try:
        assert (await link.request(sale(1_013)))["39"] == "05"
        assert (await link.request(sale(2_013)))["39"] == "00"   # times = 1: the rule is spent
        assert (await link.request(sale(1_000)))["39"] == "00"
        srv.host.config.latency = 0.5
        with pytest.raises(IssuerTimeout):
            await link.request(sale(7), timeout=0.1)
        srv.host.config.latency = 0.0

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert srv.ledger.balance(PAN) == 100_000 - 2_013 - 1_000
    finally:
        await link.close()
        await srv.close(close_ledger=True)


async def test_refund_advice_store_and_forward_posts_once(issuer):
    """The first 0220 is posted but its 0230 lost; the 0221 repeat is deduplicated (41 + 37): one credit."""
    issuer.faults.add(action="drop_response", kind="refund", times=1)
    seen: list[str] = []
    orig = issuer.host.process

    async def spy(msg, kind=None):
        seen.append(msg["t"])
        return await orig(msg, kind)
    issuer.host.process = spy
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1, reversal_retry=0.05).start(wait=2)
    try:
        with pytest.raises(ValueError):
            await link.advise(sale(1))
        await link.advise(sale(800, kind="refund"))

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert seen[0] == "0220" and "0221" in seen[1:]
        assert issuer.ledger.balance(PAN) == 100_800
        assert [p.kind for p in issuer.ledger.postings(PAN)] == ["credit"]
        (_, code, _), = link.reversals.acked
        assert code == "00"
    finally:
        await link.close()


async def test_reversal_repeats_are_0421(issuer):
    issuer.faults.add(action="drop_response", kind="sale", times=1)
    issuer.faults.add(action="drop", kind="reversal", times=1)
    seen: list[str] = []
    orig = issuer.host.process

    async def spy(msg, kind=None):
        seen.append(msg["t"])
        return await orig(msg, kind)
    issuer.host.process = spy
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1, reversal_retry=0.05).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(sale(300))

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert seen == ["0200", "0421"]                        # the dropped 0420 never reached process()
        assert issuer.ledger.balance(PAN) == 100_000
    finally:
        await link.close()


async def test_late_0430_acknowledges_the_reversal(issuer):
    """An issuer slower than the reversal timeout: the late 0430 still clears the queue (no endless retry)."""
    issuer.faults.add(action="drop_response", kind="sale", times=1)
    issuer.faults.add(action="delay", delay=0.3, kind="reversal")
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=0.1, reversal_retry=1.0).start(wait=2)
    try:
        with pytest.raises(IssuerTimeout):
            await link.request(sale(600))

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done)
        assert issuer.ledger.balance(PAN) == 100_000
        assert issuer.faults.rules[1].hits == 1                # acknowledged by the late answer, not a retry
    finally:
        await link.close()


async def test_store_and_forward_backs_off_while_the_issuer_stays_silent(issuer):
    """Each round of unanswered reversals doubles the pause before the next (capped); an answer resets it."""
    issuer.faults.add(action="drop", kind="reversal", times=6)  # the issuer ignores the first six attempts
    delays_seen: list[float] = []
    link = IssuerLink("127.0.0.1", issuer.port, timeout=0.5, reversal_timeout=0.03, reversal_retry=0.02,
                      reversal_retry_max=0.16)
    send = link._send_reversal

    async def spy(item, rev):
        delays_seen.append(link.reversal_delay)  # the pause that follows if this attempt goes unanswered
        return await send(item, rev)

    link._send_reversal = spy
    await link.start(wait=2)
    try:
        approved = await link.request(sale(500))
        assert approved["39"] == "00"
        await link.reverse(approved, "98")

        async def done():
            return await link.pending_reversals() == 0
        await eventually(done, timeout=10)
        assert delays_seen == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16, 0.16]
        assert link.reversal_delay == 0.02  # answered: the next outage starts from the short pause again
        assert issuer.ledger.balance(PAN) == 100_000
    finally:
        await link.close()
