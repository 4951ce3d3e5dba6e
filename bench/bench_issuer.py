"""Issuer link: 500 concurrent H2H requests over loopback, coalesced writes vs one write per message.

The peer is a minimal H2H responder (FrameReader -> response_to -> one write per read), so the link's
own cost dominates. Baseline in the same run: ``IssuerLink(coalesce=False)``. Prints the ratio; no threshold.
A second pair measures the full issuer simulator (ledger postings in SQLite) with coalescing on.
"""

from __future__ import annotations

import asyncio

import pytest

from issuer_sim import accounts as accounts_mod
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink

N = 500
PAN = "6212345678901234"
RESULTS: dict[str, float] = {}


class _Responder(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.r = h2h.FrameReader()

    def data_received(self, data):
        out = [h2h.frame(h2h.response_to(h2h.decode(b), "00", **{"38": "000001"})) for b in self.r.feed(data)]
        if out:
            self.t.write(b"".join(out))


async def _run(coalesce: bool, full_issuer: bool) -> int:
    loop = asyncio.get_running_loop()
    if full_issuer:
        srv = await start_issuer(accounts_mod.parse(
            {"accounts": [{"pan": PAN, "expiry": "9912", "balance": 10**12}]}))
        port, closer = srv.port, srv.close
    else:
        server = await loop.create_server(_Responder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def closer():
            server.close()
            await server.wait_closed()
    link = await IssuerLink("127.0.0.1", port, timeout=30, coalesce=coalesce).start(wait=5)
    try:
        msgs = [h2h.financial_request("sale", terminal_id="T0000001", merchant_id="898310048990001",
                                      rrn=f"{i:012d}", amount=1, pan=PAN) for i in range(N)]
        resps = await asyncio.gather(*(link.request(m) for m in msgs))
        assert all(r["39"] == "00" for r in resps)
        return len(resps)
    finally:
        await link.close()
        await closer()


@pytest.mark.parametrize("mode", ["write_per_message", "coalesced", "issuer_sim_coalesced"])
def test_concurrent_requests(benchmark, mode: str) -> None:
    coalesce = mode != "write_per_message"
    full = mode == "issuer_sim_coalesced"
    benchmark.pedantic(lambda: asyncio.run(_run(coalesce, full)), rounds=5, iterations=1)
    RESULTS[mode] = benchmark.stats.stats.median
    if mode == "issuer_sim_coalesced":
        print(f"\nissuer_sim: {N} concurrent sales in {RESULTS[mode] * 1e3:.0f} ms "
              f"({N / RESULTS[mode]:.0f} req/s incl. SQLite postings)")
    if {"write_per_message", "coalesced"} <= RESULTS.keys() and mode == "coalesced":
        ratio = RESULTS["write_per_message"] / RESULTS["coalesced"]
        print(f"\nissuer link: {N} concurrent requests, coalesced writes {ratio:.2f}x vs one write per message "
              f"({N / RESULTS['coalesced']:.0f} vs {N / RESULTS['write_per_message']:.0f} req/s)")
