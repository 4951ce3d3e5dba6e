"""The load tools themselves, against the real in-process stack (switch.testbed) over loopback.

bench/loadgen.py pre-builds one request per connection and only patches the STAN (and recomputes
the MAC, or patches the RRN for H2H) per request: these tests prove the switch accepts every such
frame (MAC verified in the HSM, PIN translated, approved by the issuer), that the generator's
counts agree with the issuer ledger, and that bench/forwarder.py relays the H2H traffic to the
issuer simulator unchanged (every request answered and posted).  Short runs (about a second).
"""

from __future__ import annotations

import asyncio
import os

import pytest
from benchmods import load as load_bench

from hsm_sim import lmk
from switch import testbed
from switch.testbed import MERCHANT_ID, Stack

pytestmark = pytest.mark.timeout(60)


loadgen = load_bench("loadgen")
forwarder = load_bench("forwarder")


@pytest.fixture
async def stack(tmp_path):
    s = await Stack.start(tmp_path, terminals=1, issuer_timeout=5.0)
    for i in range(2):  # the generator's terminals LG000000.. with the testbed's deterministic TMKs
        s.registry.add(loadgen.terminal_id(i), MERCHANT_ID, lmk.encrypt_under_lmk(testbed.test_tmk(i), "TMK"))
    yield s
    await s.stop()


def _args(*argv: str):
    return loadgen.build_parser().parse_args(list(argv))


def test_templates_patch_only_stan_and_mac() -> None:
    from _fastcore import crypto
    from switch.flows import wire

    mak = bytes.fromhex("0123456789ABCDEF")
    doc = {"t": "0200", "3": "000000", "4": "000000000001", "11": "000001", "25": "00", "41": "LG000000",
           "42": MERCHANT_ID, "49": "156", "60": "22000001000"}
    t = loadgen.PosTemplate(b"\x60\x00\x03\x00\x00", bytes(6), doc, mak)
    frame = t.build(4711)
    body = frame[2 + 11:]
    decoded = wire.decode(body)
    assert decoded["11"] == "004711" and decoded["4"] == "000000000001"
    assert bytes.fromhex(decoded["64"]) == crypto.mac_pos_ecb(mak, body[:-8])
    h = loadgen.H2HTemplate({"t": "0200", "3": "000000", "4": "000000000001", "11": "000000", "37": "0" * 12,
                             "41": "LG000000", "42": MERCHANT_ID}, "010000")
    from switch import h2h

    msg = h2h.decode(h.build(123)[2:])
    assert msg["11"] == "000123" and msg["37"] == "010000000123" and msg["4"] == "000000000001"


async def test_pos_load_is_accepted_and_matches_the_ledger(stack):
    card = stack.card("cup", 0)
    before = stack.issuers["cup"].ledger.balance(card.pan)
    gen = loadgen.LoadGen(_args("--port", str(stack.port), "--terminals", "2", "--in-flight", "6",
                                "--seconds", "1.0", "--warmup", "0.2", "--pan", card.pan, "--amount", "3",
                                "--pid", f"self={os.getpid()}"))
    report = await gen.run()
    assert report["txns"] > 0 and report["rc"] == {"00": report["txns"]}
    assert report["lost"] == 0 and report["unanswered_at_end"] == 0 and report["sent"] == report["replies"]
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["p999_ms"] <= report["max_ms"]
    assert report["cpu"]["self"]["cpu_s"] > 0
    # every request the generator sent was a distinct, approved and posted sale
    assert before - stack.issuers["cup"].ledger.balance(card.pan) == 3 * report["sent"]


async def test_paced_load_holds_the_rate(stack):
    card = stack.card("cup", 1)
    gen = loadgen.LoadGen(_args("--port", str(stack.port), "--terminals", "2", "--in-flight", "8",
                                "--rate", "40", "--seconds", "1.0", "--warmup", "0.2", "--pan", card.pan))
    report = await gen.run()
    assert report["rc"] == {"00": report["txns"]}
    assert report["sent"] <= 40 * 1.2 + 2  # paced: never more than the rate allows over 1.2 s


async def test_h2h_load_through_the_forwarder_reaches_the_issuer(stack):
    card = stack.card("cup", 2)
    issuer = stack.issuers["cup"]
    before = issuer.ledger.balance(card.pan)
    zpk = lmk.DEFAULT_LMK.decrypt_key(stack.router.routes["cup"].zpk_under_lmk, "ZPK")  # simulator's test LMK
    stop = asyncio.Event()
    listen = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listen.sockets[0].getsockname()[1]
    listen.close()
    await listen.wait_closed()
    task = asyncio.get_running_loop().create_task(
        forwarder.serve(("127.0.0.1", port), ("127.0.0.1", stack.issuer_ports["cup"]), stop))
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        gen = loadgen.LoadGen(_args("--mode", "h2h", "--port", str(port), "--terminals", "2", "--in-flight", "4",
                                    "--seconds", "1.0", "--warmup", "0.2", "--pan", card.pan, "--amount", "2",
                                    "--zpk", zpk.hex()))
        report = await gen.run()
    finally:
        stop.set()
        await task
    assert report["txns"] > 0 and report["rc"] == {"00": report["txns"]}
    assert report["sent"] == report["replies"]
    assert before - issuer.ledger.balance(card.pan) == 2 * report["sent"]


def test_bench_switch_orchestration_smoke(tmp_path):
    """bench/bench_switch.py end to end with tiny windows: the CLIs it starts (posswitch hsm, issuer,
    serve --config with the config it writes), the forwarder and three load-generator runs all work,
    every sale is approved and the summary table renders.  Catches config/CLI drift early."""
    bench_switch = load_bench("bench_switch")
    results = bench_switch.run(seconds=0.5, warmup=0.2, terminals=2, in_flight=4, workdir=str(tmp_path),
                               verbose=False)
    for name in ("switch max", "ceiling", "switch half"):
        r = results[name]
        assert r["txns"] > 0 and r["rc"] == {"00": r["txns"]}, (name, r["rc"])
        assert r["sent"] == r["replies"] and r["lost"] == 0
    assert results["switch max"]["cpu"]["switch"]["cpu_s"] >= 0 and "forwarder" in results["ceiling"]["cpu"]
    assert results["ratio"] > 0
    table = bench_switch.table(results)
    assert "| switch max |" in table and "| ceiling |" in table and "switch throughput / ceiling = " in table


def test_percentiles_are_nearest_rank_and_cpu_ticks_count_this_process() -> None:
    ns = sorted(range(1_000_000, 1001 * 1_000_000 + 1, 1_000_000))  # 1..1001 ms
    assert loadgen.percentile(ns, 0.50) == 501.0
    assert loadgen.percentile(ns, 0.99) == 991.0
    assert loadgen.percentile(ns, 0.999) == 1000.0
    assert loadgen.percentile([7_000_000], 0.999) == 7.0
    assert loadgen.percentile([], 0.5) != loadgen.percentile([], 0.5)  # NaN when nothing was measured
    t0 = loadgen.cpu_ticks(os.getpid())
    m0 = loadgen.main_thread_ticks(os.getpid())
    end = __import__("time").process_time() + 0.1
    while __import__("time").process_time() < end:
        pass
    assert loadgen.cpu_ticks(os.getpid()) > t0 and loadgen.main_thread_ticks(os.getpid()) > m0
    assert loadgen.percentile(sorted(range(1, 101)), 0.99) == 99 / 1e6  # rank ceil(0.99 * 100) = 99


async def test_chip_load_is_accepted(stack):
    card = stack.card("cup", 3)
    before = stack.issuers["cup"].ledger.balance(card.pan)
    gen = loadgen.LoadGen(_args("--port", str(stack.port), "--terminals", "2", "--in-flight", "4", "--entry", "chip",
                                "--seconds", "0.6", "--warmup", "0.2", "--pan", card.pan))
    report = await gen.run()
    assert report["txns"] > 0 and report["rc"] == {"00": report["txns"]}
    assert before - stack.issuers["cup"].ledger.balance(card.pan) == report["sent"]
