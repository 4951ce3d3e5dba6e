"""HSM simulator throughput: CA (TPK -> ZPK PIN translation) per second over loopback.

One server process (``python -m hsm_sim``, uvloop) and one pipelined client connection in
this process.  Each round translates ``BATCH`` PIN blocks issued at once; the baseline in
the same run is the same work awaited one request at a time (no pipelining), so the ratio
shows what pipelining and coalesced writes buy.  Goal: >= 20,000 CA/s pipelined.

Also in-process, no sockets: ``Hsm.handle`` per command for the four commands of a sale (M8,
CA, M6 at the switch, EC at the issuer), fast path against the general handler (``_FAST``
emptied) in the same run.  As a script it prints CPU µs per command (``time.process_time``).

    .venv/bin/pytest bench/bench_hsm.py --benchmark-only -s
    .venv/bin/python bench/bench_hsm.py [N]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from unittest import mock

import pytest

from hsm_sim import commands
from hsm_sim.lmk import encrypt_under_lmk, set_odd_parity
from switch.hsm_client import HsmClient, account_number

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



# -- in-process: Hsm.handle per command of a sale ------------------------------------------------

TAK_CLEAR = set_odd_parity(bytes.fromhex("1C2D3E4F5A6B7C8D9EAFB0C1D2E3F405"))
PVK_CLEAR = set_odd_parity(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
SALE_COMMANDS = ("M8", "CA", "M6", "EC")


def sale_frames() -> dict[str, bytes]:
    """The frames of one sale as the switch (M8, CA, M6; UnionPay POS MAC over a 300-byte
    message) and the issuer (EC, PVV) send them."""
    from _fastcore import crypto as fc

    tpk, zpk = encrypt_under_lmk(TPK_CLEAR, "TPK"), encrypt_under_lmk(ZPK_CLEAR, "ZPK")
    tak, pvk = encrypt_under_lmk(TAK_CLEAR, "TAK"), encrypt_under_lmk(PVK_CLEAR, "PVK")
    pan, pin = "6212340000000001", "123456"
    acct = account_number(pan)
    data = b"0200" + bytes(range(256)) + bytes(40)
    mac = fc.mac_pos_ecb(TAK_CLEAR, data)
    tblk = fc.encrypt_pin_block(TPK_CLEAR, pin, pan, 0).hex().upper()
    zblk = fc.encrypt_pin_block(ZPK_CLEAR, pin, pan, 0).hex().upper()
    pvv = fc.visa_pvv(PVK_CLEAR, pan, "1", pin)
    return {
        "M8": f"0001M80091{0}003{tak}{len(data):04X}".encode() + data + mac,
        "CA": f"0002CA{tpk}{zpk}12{tblk}0101{acct}".encode(),
        "M6": f"0003M60091{0}003{tak}{len(data):04X}".encode() + data,
        "EC": f"0004EC{zpk}{pvk}{zblk}01{acct}1{pvv}".encode(),
    }


def _warm_hsm() -> tuple[commands.Hsm, dict[str, bytes]]:
    hsm, frames = commands.Hsm(), sale_frames()
    for frame in frames.values():
        reply = hsm.handle(frame)
        assert reply[6:8] == b"00", reply  # and the key cache is filled
    return hsm, frames


@pytest.mark.parametrize("path", ["general", "fast"])
@pytest.mark.parametrize("code", SALE_COMMANDS)
def test_handle_per_command(benchmark, ratio_table, code: str, path: str) -> None:
    hsm, frames = _warm_hsm()
    frame = frames[code]
    patch = mock.patch.dict(commands._FAST, clear=True) if path == "general" else mock.patch.dict({})
    with patch:
        reply = benchmark(hsm.handle, frame)
    assert reply[6:8] == b"00"
    ratio_table.record_benchmark("hsm_sim Hsm.handle (in-process)", f"{code} {path}", benchmark, f"{code} general")


def cpu_us_per_command(n: int = 20000, repeat: int = 5) -> dict[str, tuple[float, float]]:
    """``{command: (general µs, fast µs)}``: best of ``repeat`` loops of ``n`` calls, CPU time."""
    hsm, frames = _warm_hsm()

    def best(frame: bytes) -> float:
        handle, out = hsm.handle, []
        for _ in range(repeat):
            t = time.process_time()
            for _ in range(n):
                handle(frame)
            out.append((time.process_time() - t) / n * 1e6)
        return min(out)

    result = {}
    for code in SALE_COMMANDS:
        with mock.patch.dict(commands._FAST, clear=True):
            general = best(frames[code])
        result[code] = (general, best(frames[code]))
    return result


if __name__ == "__main__":
    res = cpu_us_per_command(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
    for code, (general, fast) in res.items():
        print(f"{code}: general {general:5.2f} us  fast {fast:5.2f} us")
    total = [sum(v[i] for v in res.values()) for i in (0, 1)]
    print(f"sale (M8+CA+M6+EC): general {total[0]:5.2f} us  fast {total[1]:5.2f} us")
