"""Switch end to end: card sales per second through the whole stack, uvloop vs asyncio.

One process runs everything (``switch.testbed.Stack``): HSM simulator, issuer simulator, the
switch (SQLite journal, group commit) and 8 simulated terminals, each pipelining 8 sales
(contactless, no PIN: MAC verify + MAC generate in the HSM, journal insert + approval commit,
issuer authorisation with ledger posting).  Baseline in the same run: the standard asyncio loop;
measured: uvloop.  The numbers are whole-stack throughput on a shared 2-core box (the simulators
take most of the CPU), not the switch alone.

    .venv/bin/pytest bench/bench_switch.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import pytest

from switch.testbed import Stack

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

TERMINALS = 8
PIPELINE = 8
ROUNDS_OF_SALES = 16  # per terminal per benchmark round: TERMINALS * PIPELINE * ROUNDS_OF_SALES sales
SALES = TERMINALS * PIPELINE * ROUNDS_OF_SALES
RESULTS: dict[str, float] = {}


def _setup(loop: asyncio.AbstractEventLoop) -> tuple[Stack, list[Any], Any]:
    work = tempfile.TemporaryDirectory(prefix="bench-switch-")
    stack = loop.run_until_complete(Stack.start(work.name, terminals=TERMINALS, issuer_timeout=30.0))
    terms = [loop.run_until_complete(stack.connected_terminal(i)) for i in range(TERMINALS)]
    return stack, terms, work


async def _sales(stack: Stack, terms: list[Any]) -> None:
    cards = [stack.card("cup", n) for n in range(4)]

    async def one_terminal(i: int, term: Any) -> None:
        for r in range(ROUNDS_OF_SALES):
            replies = await asyncio.gather(*(term.sale(cards[(i + k) % 4], 100 + r, entry="contactless")
                                             for k in range(PIPELINE)))
            assert all(rep.rc == "00" for rep in replies), [rep.rc for rep in replies]

    await asyncio.gather(*(one_terminal(i, t) for i, t in enumerate(terms)))


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_sales_per_second(benchmark: Any, ratio_table: Any, kind: str) -> None:
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop not installed")
    loop = _new_loop(kind)
    stack, terms, work = _setup(loop)
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(_sales(stack, terms)), rounds=5, iterations=1)
    finally:
        loop.run_until_complete(stack.stop())
        loop.close()
        work.cleanup()
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    per_sale = stats.stats.median / SALES
    RESULTS[kind] = per_sale
    print(f"\n{kind}: {SALES} sales per round, median {stats.stats.median:.3f} s = {1 / per_sale:,.0f} sales/s")
    if kind == "uvloop" and "asyncio" in RESULTS:
        ratio_table.record("switch end to end (per sale)", "uvloop vs asyncio", RESULTS["asyncio"], per_sale)
        print(f"uvloop / asyncio throughput ratio: {RESULTS['asyncio'] / per_sale:.2f}x")
