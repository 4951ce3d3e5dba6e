"""Back-pressure: a slow issuer must not make the switch queue requests without bound.

The whole stack runs in-process (switch.testbed) with a fault proxy between the switch's "cup"
issuer link and the issuer simulator; the proxy holds every 0210 for a while, i.e. the issuer is
slow.  While answers are held, the number of requests outstanding on the issuer link is sampled.

* per connection (exists): a terminal pipelining more sales than ``Limits.max_in_flight`` never
  has more than that many being processed; the rest wait in the kernel (reading is paused) and
  all are approved in the end;
* globally: with ``Limits.max_total_in_flight`` = N,
  many terminals together never have more than N requests upstream; the requests over the bound
  are answered at once with 96 (91 accepted too) -- before any held approval arrives -- and nothing of
  theirs reaches the issuer or the ledger;
* the same with a slow HSM (every HSM answer held by a proxy): at most N requests are processed
  (the switch's own busy count, sampled), the rest get 96 before the first approval.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from switch.hsm_client import HsmClient
from switch.issuer_link import IssuerLink
from switch.protocol import Limits
from switch.testbed import Stack
from switch.testing.faultproxy import FaultProxy, h2h_mti

pytestmark = pytest.mark.timeout(60)
HOLD_MS = 1500


async def _slow_issuer_stack(tmp_path, limits: Limits, terminals: int) -> tuple[Stack, FaultProxy, IssuerLink]:
    stack = await Stack.start(tmp_path, terminals=terminals, issuer_timeout=10.0, limits=limits)
    proxy = FaultProxy("127.0.0.1", stack.issuer_ports["cup"])
    await proxy.start()
    await stack.links["cup"].close()
    link = IssuerLink("127.0.0.1", proxy.port, name="cup", timeout=10.0, reversal_retry=0.2,
                      reversal_store=stack.journal.reversal_store())
    await link.start(wait=5.0)
    stack.links["cup"] = link
    stack.router.routes["cup"].link = link
    proxy.down.delay(HOLD_MS, count=None, match=h2h_mti("0210"))
    return stack, proxy, link


class PeakSampler:
    """Samples ``link.in_flight`` (requests sent, answer pending) every few milliseconds."""

    def __init__(self, link: IssuerLink) -> None:
        self.link, self.peak, self._task = link, 0, None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.link.in_flight)
            await asyncio.sleep(0.005)

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_per_connection_in_flight_limit_bounds_upstream_requests(tmp_path):
    stack, proxy, link = await _slow_issuer_stack(tmp_path, Limits(max_in_flight=3), terminals=1)
    try:
        term = await stack.connected_terminal(0)
        card = stack.card("cup", 0)
        with PeakSampler(link) as sampler:
            replies = await asyncio.gather(*(term.sale(card, 100 + k, pin=card.pin) for k in range(10)))
        assert [r.rc for r in replies] == ["00"] * 10  # slow, not refused: all served in the end
        assert sampler.peak == 3  # the bound was reached and never exceeded
    finally:
        await stack.stop()
        await proxy.stop()


async def test_global_in_flight_limit_answers_96_fast_instead_of_queueing(tmp_path):
    bound, terminals, per_terminal = 4, 4, 5
    stack, proxy, link = await _slow_issuer_stack(tmp_path, Limits(max_in_flight=32, max_total_in_flight=bound), terminals)
    try:
        terms = [await stack.connected_terminal(i) for i in range(terminals)]
        card = stack.card("cup", 0)
        ledger = stack.issuers["cup"].ledger
        before = ledger.balance(card.pan)
        order: list[str] = []

        async def sale(term, amount: int) -> str:
            reply = await term.sale(card, amount, pin=card.pin)
            order.append(reply.rc)
            return reply.rc

        with PeakSampler(link) as sampler:
            rcs = await asyncio.gather(*(sale(t, 100 + 10 * i + k) for i, t in enumerate(terms)
                                         for k in range(per_terminal)))
        approved = [rc for rc in rcs if rc == "00"]
        refused = [rc for rc in rcs if rc != "00"]
        assert sampler.peak == bound  # reached, never exceeded
        assert len(approved) >= bound and refused and set(refused) <= {"96", "91"}, rcs
        # refused fast: every refusal reached its terminal before the first (held) approval
        first_ok = order.index("00")
        assert set(order[:first_ok]) <= {"96", "91"} and len(order[:first_ok]) == len(refused), order
        # nothing of a refused request reached the issuer
        assert ledger.balance(card.pan) == before - sum(
            100 + 10 * i + k for i in range(terminals) for k in range(per_terminal)
            if rcs[i * per_terminal + k] == "00")
    finally:
        with contextlib.suppress(Exception):
            await stack.stop()
        await proxy.stop()


async def test_global_in_flight_limit_with_a_slow_hsm(tmp_path):
    bound, terminals, per_terminal = 3, 3, 4
    stack = await Stack.start(tmp_path, terminals=terminals, issuer_timeout=10.0,
                              limits=Limits(max_in_flight=32, max_total_in_flight=bound))
    proxy = FaultProxy("127.0.0.1", stack.hsm_port)
    await proxy.start()
    client = await HsmClient.connect("127.0.0.1", proxy.port, timeout=10.0, reconnect_delay=0.05)
    try:
        terms = [await stack.connected_terminal(i) for i in range(terminals)]  # signed on via the direct HSM
        assert stack.server is not None
        processor = stack.server.processor
        processor.services.security.hsm = client
        proxy.down.delay(250, count=None)  # every HSM answer 250 ms late: a PIN sale needs several
        card = stack.card("cup", 1)
        order: list[str] = []
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, processor.busy)
                await asyncio.sleep(0.005)

        async def sale(term, amount: int) -> str:
            reply = await term.sale(card, amount, pin=card.pin)
            order.append(reply.rc)
            return reply.rc

        sampler = asyncio.ensure_future(sample())
        try:
            rcs = await asyncio.gather(*(sale(t, 200 + 10 * i + k) for i, t in enumerate(terms)
                                         for k in range(per_terminal)))
        finally:
            sampler.cancel()
        refused = [rc for rc in rcs if rc != "00"]
        assert peak == bound
        assert rcs.count("00") >= bound and refused and set(refused) == {"96"}, rcs
        first_ok = order.index("00")
        assert order[:first_ok] == ["96"] * len(refused), order  # refusals did not wait for the HSM
        assert processor.overloaded >= len(refused)
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await stack.stop()
        await proxy.stop()
