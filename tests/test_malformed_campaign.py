"""Malformed-input campaign against a live switch process while valid terminals keep transacting.

``posswitch hsm``, ``posswitch issuer`` and ``posswitch serve`` run as real processes (the way
bench/bench_switch.py starts them), so the switch's open file descriptors (/proc/PID/fd) and
resident memory (/proc/PID/status VmRSS) can be read from outside.  While a few signed-on
terminals run PIN sales, this test throws at the switch, on many connections at once:

* thousands of mutated frames with a consistent length prefix (truncated bodies, bit flips,
  random garbage, bytes inserted/removed, a valid sale with a broken MAC, header/TPDU garbage);
* stream-breaking frames on fresh connections: length prefix 0, 1, 65535, just over max_frame,
  a length that promises more than is ever sent followed by a close;
* slowloris connections that trickle a frame one byte at a time and never finish it (the switch
  runs with ``[listener] frame_timeout = 1.0`` and must cut each of them itself);
* a flood of connections opened and closed at once (some half-written, some reset).

Then: every valid sale was approved (MAC verified), the switch process is still running and still
serves a fresh terminal, its open descriptors come back to the level before the campaign, its
RSS stayed within generous slack of the level after warm-up, and its log holds no traceback.
Random choices come from a fixed seed, so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from benchmods import load as load_bench

from switch import testbed
from switch.sim_terminal import SimCard, SimTerminal

pytestmark = pytest.mark.timeout(180)
SEED = 20261122
VALID_TERMINALS = 3
MUTATOR_CONNECTIONS = 6
FRAMES_PER_MUTATOR = 500  # 3000 mutated frames in all
BREAKERS = 300  # stream-breaking frames, one fresh connection each
SLOWLORIS = 20
FRAME_TIMEOUT = 1.0  # [listener] frame_timeout of the switch under test
FLOOD = 400
RSS_SLACK_KB = 64 * 1024  # generous: a leak per malformed frame would show as far more


bench_switch = load_bench("bench_switch")
loadgen = load_bench("loadgen")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def counter_total(metrics_port: int, name: str) -> float:
    """Sum of a Prometheus counter's samples (all labels) from the switch's /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def eventually(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def mutate(rng: random.Random, body: bytes) -> bytes:
    """One mutated message body (TPDU + header + ISO message), never empty."""
    b = bytearray(body)
    kind = rng.randrange(8)
    if kind == 0:  # truncated anywhere
        b = b[: rng.randrange(1, len(b))]
    elif kind == 1:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 2:  # random garbage of a random length
        b = bytearray(rng.randbytes(rng.randint(1, 600)))
    elif kind == 3:  # bytes inserted
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 40))
    elif kind == 4:  # bytes removed from the middle
        i = rng.randrange(len(b))
        del b[i: i + rng.randint(1, 40)]
    elif kind == 5:  # a well-formed sale whose MAC is wrong
        b[-1] ^= 0x5A
    elif kind == 6:  # TPDU / header garbage, message intact
        b[: 11] = rng.randbytes(11)
    else:  # bitmap garbage (says fields are present that are not, or the reverse)
        b[13: 21] = rng.randbytes(8)
    return bytes(b or b"\x00")


class Valid:
    """Signed-on terminals selling in a loop; every reply must be an approval with a good MAC."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = asyncio.Event()
        self.approved = 0
        self.bad: list[str] = []

    async def run(self, i: int) -> None:
        term = SimTerminal("127.0.0.1", self.port, loadgen.terminal_id(i), loadgen.MERCHANT_ID,
                           testbed.test_tmk(i), timeout=30.0)
        await term.connect()
        try:
            reply = await term.sign_on()
            assert reply.approved, reply.rc
            card = SimCard(pan=bench_switch.PAN, pin=bench_switch.PIN)
            n = 0
            while not self.stop.is_set():
                n += 1
                reply = await term.sale(card, 100 + n, pin=card.pin)
                if reply.approved and reply.mac_ok:
                    self.approved += 1
                else:
                    self.bad.append(f"{term.tid} stan {reply.request['11']}: 39={reply.rc} mac_ok={reply.mac_ok}")
        finally:
            await term.close()


async def _send_and_close(port: int, data: bytes, *, reset: bool = False, linger: float = 0.0) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        if data:
            writer.write(data)
            await writer.drain()
        if linger:
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                await asyncio.wait_for(reader.read(4096), linger)
    except OSError:
        pass
    finally:
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def mutator(port: int, template: bytes, rng: random.Random, frames: int) -> int:
    """Send ``frames`` mutated frames, pipelined, reconnecting whenever the switch drops us."""
    sent = 0
    while sent < frames:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        drainer = asyncio.ensure_future(reader.read(1 << 20))
        try:
            while sent < frames and not reader.at_eof() and not writer.transport.is_closing():
                body = mutate(rng, template)
                writer.write(len(body).to_bytes(2, "big") + body)
                sent += 1
                if sent % 5 == 0:
                    await writer.drain()
                    await asyncio.sleep(0)
                    if drainer.done():
                        if not drainer.result():
                            break  # closed by the switch (stream-breaking mutation): reconnect
                        drainer = asyncio.ensure_future(reader.read(1 << 20))
        except OSError:
            pass
        finally:
            drainer.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return sent


def breaking_frames(rng: random.Random, template: bytes, max_frame: int) -> list[bytes]:
    out = [b"\x00\x00", b"\x00\x00" * 8, b"\x00\x01\x60", b"\xff\xff", b"\xff\xff" + rng.randbytes(300),
           (max_frame + 1).to_bytes(2, "big") + rng.randbytes(64), b"\x00"]
    while len(out) < BREAKERS:
        promised = rng.randint(len(template) + 1, max_frame)
        out.append(promised.to_bytes(2, "big") + template[: rng.randrange(len(template))])  # never completed
        out.append(rng.randbytes(rng.randint(1, 64)))  # no framing at all
    return out[:BREAKERS]


async def slowloris(port: int, frame: bytes, give_up: float) -> bool:
    """Trickle ``frame`` minus its last byte, one byte per 50 ms; True when the switch closed on us."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    loop = asyncio.get_running_loop()
    end = loop.time() + give_up
    closed = False
    try:
        i = 0
        while loop.time() < end and not closed:
            if i < len(frame) - 1:
                writer.write(frame[i:i + 1])
                i += 1
            try:
                closed = not await asyncio.wait_for(reader.read(100), 0.05)
            except TimeoutError:
                pass
            except OSError:
                closed = True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return closed


async def flood(port: int, rng: random.Random, template: bytes) -> None:
    async def one(k: int) -> None:
        if k % 3 == 0:
            await _send_and_close(port, b"")
        elif k % 3 == 1:
            await _send_and_close(port, len(template).to_bytes(2, "big") + template[: len(template) // 2])
        else:
            await _send_and_close(port, rng.randbytes(10), reset=True)

    for start in range(0, FLOOD, 50):
        await asyncio.gather(*(one(k) for k in range(start, min(start + 50, FLOOD))))


async def test_malformed_campaign_keeps_valid_terminals_served_and_resources_bounded(tmp_path):
    wd = tmp_path
    rng = random.Random(SEED)
    ports = {name: bench_switch.free_port() for name in ("hsm", "issuer", "switch", "metrics")}
    cli = [sys.executable, "-m", "switch.cli"]
    procs: list = []
    try:
        hsm = bench_switch.Proc("hsm", [*cli, "hsm", "--listen", f"127.0.0.1:{ports['hsm']}",
                                        "--log-level", "WARNING"], wd)
        procs.append(hsm)
        await asyncio.to_thread(hsm.wait_line, "hsm listening")
        issuer = bench_switch.Proc("issuer", [
            *cli, "issuer", "--listen", f"127.0.0.1:{ports['issuer']}", "--accounts",
            str(bench_switch.write_accounts(wd)), "--hsm", f"127.0.0.1:{ports['hsm']}",
            "--ledger", str(wd / "ledger.db"), "--log-level", "WARNING"], wd)
        procs.append(issuer)
        await asyncio.to_thread(issuer.wait_line, "issuer listening")
        cfg = bench_switch.write_switch_config(wd, ports, VALID_TERMINALS + 2, "NORMAL", issuer_timeout=10.0)
        text = cfg.read_text()  # a short per-frame deadline, so the slowloris senders get cut during the test
        assert "max_in_flight = 64\n" in text
        cfg.write_text(text.replace("max_in_flight = 64\n", f"max_in_flight = 64\nframe_timeout = {FRAME_TIMEOUT}\n", 1))
        max_frame = 4096  # bench_switch's [listener] max_frame
        switch = bench_switch.Proc("switch", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(switch)
        await asyncio.to_thread(switch.wait_port, ports["switch"])
        pid, port = switch.pid, ports["switch"]

        # a real MACed sale of the spare terminal: the template every mutation starts from
        spare = SimTerminal("127.0.0.1", port, loadgen.terminal_id(VALID_TERMINALS), loadgen.MERCHANT_ID,
                            testbed.test_tmk(VALID_TERMINALS), timeout=30.0)
        await spare.connect()
        assert (await spare.sign_on()).approved
        card = SimCard(pan=bench_switch.PAN, pin=bench_switch.PIN)
        for n in range(100):  # warm-up (every code path loaded); the issuer link may still be coming up
            warm = await spare.sale(card, 4321 + n, pin=card.pin)
            if warm.approved:
                break
            await asyncio.sleep(0.1)
        assert warm.approved, warm.rc
        doc = spare._base("0200", "000000", "22")
        doc.update({"4": f"{777:012d}", "25": "00", "49": "156"})
        spare._card_fields(doc, card, "swipe", card.pin, 777)
        template = spare.tpdu + spare.header + spare.encode(doc, mac=True)
        await spare.close()
        # warm-up of the connection paths too, then the baseline
        await flood(port, random.Random(SEED + 1), template)
        await asyncio.sleep(0.5)
        fds_before, rss_before = open_fds(pid), rss_kb(pid)

        valid = Valid(port)
        valid_tasks = [asyncio.ensure_future(valid.run(i)) for i in range(VALID_TERMINALS)]
        slow_frame = len(template).to_bytes(2, "big") + template
        slow_tasks = [asyncio.ensure_future(slowloris(port, slow_frame, 30.0)) for _ in range(SLOWLORIS)]
        sent = await asyncio.gather(*(mutator(port, template, random.Random(SEED + 10 + k), FRAMES_PER_MUTATOR)
                                      for k in range(MUTATOR_CONNECTIONS)))
        assert sum(sent) == MUTATOR_CONNECTIONS * FRAMES_PER_MUTATOR
        for k in range(0, BREAKERS, 30):
            await asyncio.gather(*(_send_and_close(port, data, linger=0.05)
                                   for data in breaking_frames(rng, template, max_frame)[k: k + 30]))
        await flood(port, rng, template)
        assert switch.p.poll() is None, switch.tail()
        rss_during = rss_kb(pid)
        rejected = await asyncio.to_thread(counter_total, ports["metrics"], "posswitch_rejected_frames_total")
        mac_failures = await asyncio.to_thread(counter_total, ports["metrics"], "posswitch_mac_failures_total")
        print(f"rejected frames {rejected:.0f}, MAC failures {mac_failures:.0f}, RSS {rss_before} -> {rss_during} kB")
        # the mutations really reached the parser and the MAC check (not just a closed socket)
        assert rejected >= 300 and mac_failures >= 10, (rejected, mac_failures)

        slow_closed = await asyncio.gather(*slow_tasks)
        assert all(slow_closed), slow_closed  # the switch cut every slow sender itself (frame_timeout)
        valid.stop.set()
        await asyncio.wait_for(asyncio.gather(*valid_tasks), 60)
        assert not valid.bad, valid.bad[:5]
        assert valid.approved >= VALID_TERMINALS  # they really transacted during the campaign

        # the switch still serves a fresh terminal, and everything it opened for the campaign is closed
        fresh = SimTerminal("127.0.0.1", port, loadgen.terminal_id(VALID_TERMINALS + 1), loadgen.MERCHANT_ID,
                            testbed.test_tmk(VALID_TERMINALS + 1), timeout=30.0)
        await fresh.connect()
        assert (await fresh.sign_on()).approved
        reply = await fresh.sale(card, 999, pin=card.pin)
        assert reply.approved and reply.mac_ok
        await fresh.close()
        await eventually(lambda: open_fds(pid) <= fds_before, 30,
                         f"descriptors back to {fds_before} (now {open_fds(pid)})")
        rss_after = rss_kb(pid)
        assert rss_after <= rss_before + RSS_SLACK_KB, (rss_before, rss_during, rss_after)
        log_text = switch.log_path.read_text(errors="replace")
        assert "Traceback" not in log_text, log_text[-3000:]
        assert switch.p.poll() is None
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proc.stop)
