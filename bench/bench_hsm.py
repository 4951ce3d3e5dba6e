"""HSM simulator throughput: CA (TPK -> ZPK PIN translation) per second over loopback.

One server process (``python -m hsm_sim``, uvloop) and one pipelined client connection in
this process.  Each round translates ``BATCH`` PIN blocks issued at once; the baseline in
the same run is the same work awaited one request at a time (no pipelining), so the ratio
shows what pipelining and coalesced writes buy.  Goal: >= 20,000 CA/s pipelined.

    .venv/bin/pytest bench/bench_hsm.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hsm_sim.lmk import encrypt_under_lmk, set_odd_parity
from switch.hsm_client import HsmClient

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

BATCH = 5000
SERIAL = 500
TPK_CLEAR = set_odd_parity(bytes.fromhex("3E8F5B7A9C1D2E4F6A7B8C9D0E1F2A3B"))
ZPK_CLEAR = set_odd_parity(bytes.fromhex("B0C1D2E3F405162738495A6B7C8D9EAF"))
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def hsm_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsm_sim", "--listen", "127.0.0.1:0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def client(hsm_port: int, loop: asyncio.AbstractEventLoop) -> Iterator[HsmClient]:
    c = loop.run_until_complete(HsmClient.connect("127.0.0.1", hsm_port, timeout=30))
    yield c
    loop.run_until_complete(c.close())


def _work() -> tuple[str, str, list[bytes], list[str]]:
    from _fastcore import crypto as fc

    tpk, zpk = encrypt_under_lmk(TPK_CLEAR, "TPK"), encrypt_under_lmk(ZPK_CLEAR, "ZPK")
    pans = [f"62{i:014d}{i % 10}" for i in range(BATCH)]
    blocks = [fc.encrypt_pin_block(TPK_CLEAR, f"{i % 10**6:06d}", pan, 0) for i, pan in enumerate(pans)]
    return tpk, zpk, blocks, pans


def _report(name: str, n: int, seconds: float, ratio_table=None) -> None:
    RESULTS[name] = n / seconds
    line = f"\n{name}: {n / seconds:,.0f} CA/s"
    if "pipelined" in RESULTS and "serial" in RESULTS:
        line += f"  (pipelined / serial = {RESULTS['pipelined'] / RESULTS['serial']:.1f}x; goal 20,000 CA/s)"
        if ratio_table is not None:
            ratio_table.record(
                "hsm_sim CA over loopback (per translation)",
                "pipelined, one connection",
                1 / RESULTS["serial"],
                1 / RESULTS["pipelined"],
            )
    print(line)


def test_ca_serial_baseline(benchmark, client: HsmClient, loop: asyncio.AbstractEventLoop) -> None:
    tpk, zpk, blocks, pans = _work()

    async def run() -> None:
        for b, pan in zip(blocks[:SERIAL], pans[:SERIAL], strict=True):
            await client.translate_pin_tpk_to_zpk(tpk, zpk, b, pan)

    benchmark.pedantic(lambda: loop.run_until_complete(run()), rounds=3, warmup_rounds=1)
    _report("serial", SERIAL, benchmark.stats.stats.min)


def test_ca_pipelined(benchmark, client: HsmClient, loop: asyncio.AbstractEventLoop, ratio_table) -> None:
    tpk, zpk, blocks, pans = _work()

    async def run() -> None:
        outs = await asyncio.gather(
            *(client.translate_pin_tpk_to_zpk(tpk, zpk, b, pan) for b, pan in zip(blocks, pans, strict=True))
        )
        assert len(outs) == BATCH

    benchmark.pedantic(lambda: loop.run_until_complete(run()), rounds=5, warmup_rounds=1)
    _report("pipelined", BATCH, benchmark.stats.stats.min, ratio_table)

