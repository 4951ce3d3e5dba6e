"""IssuerLink per-request deadlines (one watchdog timer, no timer per request) over a fake transport.

The answers are fed by hand, so each test decides what is answered, when, and with which key:
mixed timeouts on one link, late answers after a timeout, cancelled requests, answers that match
the STAN but not 41/37, a STAN reused while the deadline of its earlier request is still queued.
"""

from __future__ import annotations

import asyncio

import pytest

from switch import h2h
from switch.issuer_link import IssuerLink, IssuerTimeout, LinkState, _LinkProtocol

PAN = "6212345678901234"


class FakeTransport:
    """Collects the frames the link writes (decoded); answers are given with ``answer``."""

    def __init__(self) -> None:
        self.reader = h2h.FrameReader()
        self.sent: list[dict[str, str]] = []
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.sent += [h2h.decode(b) for b in self.reader.feed(data)]

    def abort(self) -> None:
        self.closing = True

    close = abort


class Late:
    def __init__(self) -> None:
        self.late = 0

    def late_response(self, link: str) -> None:
        self.late += 1


async def fake_link(**kw) -> tuple[IssuerLink, FakeTransport, Late]:
    late = Late()
    link = IssuerLink("127.0.0.1", 1, metrics=late, **kw)
    link._loop = asyncio.get_running_loop()
    proto = _LinkProtocol(link)
    transport = FakeTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    link._proto = proto
    link.state = LinkState.UP
    return link, transport, late


def balance(rrn: str) -> dict[str, str]:  # not reversible: a timeout queues nothing
    return h2h.financial_request("balance", terminal_id="T0000001", merchant_id="898310048990001",
                                 rrn=rrn, pan=PAN)


def answer(link: IssuerLink, sent: dict[str, str], **over: str) -> None:
    resp = h2h.response_to(sent, "00")
    resp.update(over)
    link._on_message(resp)


async def until_sent(transport: FakeTransport, n: int) -> None:
    while len(transport.sent) < n:
        await asyncio.sleep(0)


async def test_short_timeout_fires_while_a_longer_one_waits():
    link, transport, _ = await fake_link(timeout=30)
    slow = asyncio.ensure_future(link.request(balance("000000000001")))           # link timeout: 30 s
    await until_sent(transport, 1)
    with pytest.raises(IssuerTimeout):
        await link.request(balance("000000000002"), timeout=0.05)                  # re-arms the watchdog earlier
    assert not slow.done() and link.in_flight == 1
    answer(link, transport.sent[0])
    assert (await slow)["39"] == "00"
    assert link.in_flight == 0
    await link.close()
    assert link._watchdog is None and not link._deadlines


async def test_late_answer_after_timeout_is_dropped_and_the_link_goes_on():
    link, transport, late = await fake_link(timeout=0.05)
    with pytest.raises(IssuerTimeout):
        await link.request(balance("000000000003"))
    answer(link, transport.sent[0])                                                 # too late
    assert late.late == 1 and link.in_flight == 0
    task = asyncio.ensure_future(link.request(balance("000000000004")))
    await until_sent(transport, 2)
    answer(link, transport.sent[1])
    assert (await task)["37"] == "000000000004"
    assert late.late == 1
    await link.close()


async def test_answer_must_match_stan_terminal_and_rrn():
    link, transport, late = await fake_link(timeout=30)
    task = asyncio.ensure_future(link.request(balance("000000000005")))
    await until_sent(transport, 1)
    answer(link, transport.sent[0], **{"37": "000000000099"})                       # same STAN, other RRN
    await asyncio.sleep(0)
    assert late.late == 1 and not task.done() and link.in_flight == 1
    answer(link, transport.sent[0])
    assert (await task)["39"] == "00"
    await link.close()


async def test_cancelled_request_leaves_nothing_in_flight():
    link, transport, late = await fake_link(timeout=30)
    task = asyncio.ensure_future(link.request(balance("000000000006")))
    await until_sent(transport, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert link.in_flight == 0
    answer(link, transport.sent[0])
    assert late.late == 1
    await link.close()


async def test_reused_stan_keeps_its_own_deadline():
    link, transport, _ = await fake_link(timeout=30)
    first = asyncio.ensure_future(link.request(balance("000000000007"), timeout=0.05))
    await until_sent(transport, 1)
    stan = transport.sent[0]["11"]
    answer(link, transport.sent[0])
    await first
    link._stan = int(stan) - 1                     # the next request gets the same STAN ...
    second = asyncio.ensure_future(link.request(balance("000000000008")))
    await until_sent(transport, 2)
    assert transport.sent[1]["11"] == stan
    await asyncio.sleep(0.1)                       # ... while the first one's 0.05 s deadline passes
    assert not second.done()
    answer(link, transport.sent[1])
    assert (await second)["37"] == "000000000008"
    await link.close()


async def test_watchdog_stops_when_nothing_is_in_flight():
    link, transport, _ = await fake_link(timeout=0.02)
    tasks = [asyncio.ensure_future(link.request(balance(f"{i:012d}"))) for i in range(10, 15)]
    await until_sent(transport, 5)
    for sent in transport.sent:
        answer(link, sent)
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)                      # the queued deadlines come due: all answered
    assert link._watchdog is None and not link._deadlines
    await link.close()


async def test_connection_loss_fails_in_flight_requests():
    link, transport, _ = await fake_link(timeout=30)
    task = asyncio.ensure_future(link.request(balance("000000000020")))
    await until_sent(transport, 1)
    link._fail_inflight()
    with pytest.raises(IssuerTimeout, match="no answer"):
        await task
    assert link.in_flight == 0
    await link.close()
