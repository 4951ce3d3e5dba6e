"""Closed-loop load generator for the switch (POS dialect) and for the forwarder ceiling (H2H dialect).

Run as its own process (``bench/bench_switch.py`` does it for you)::

    python bench/loadgen.py --mode pos --port 5000 --terminals 8 --in-flight 64 --seconds 10 \
        --pid switch=1234 --pid hsm=1235 --pid issuer=1236
    python bench/loadgen.py --mode h2h --port 7999 --zpk HEX ...     # through bench/forwarder.py

``pos``: each terminal (``LG000000``.., TMK ``switch.testbed.test_tmk(i)``, provisioned by the bench
config) signs on over its own connection (SimTerminal: 0800, working keys unwrapped from field 62
and checked), then sends 0200 sales (``--entry swipe``, or ``chip``/``contactless`` with field 55 and
an ARQC computed once per connection: the issuer simulator does not check ATC replay) with a PIN
block under its PIK and a POS-ECB MAC under its MAK.  ``h2h``: the requests the switch would send upstream (0200 with track 2 and the PIN block
under the issuer ZPK), straight to the issuer simulator through the forwarder.

What can be pre-built is: one encoded request per connection; per request only the STAN (and in
h2h the RRN) bytes are patched in place and, for pos, the 8-byte MAC recomputed (compiled crypto,
~1.5 us).  Replies are split by the 2-byte length and decoded with the compiled codec to match
STANs.  No task per request: a reply's ``data_received`` sends the next request of that slot.

Closed loop: ``--in-flight`` requests outstanding in total, spread over the connections.  With
``--rate R`` requests start at R/s (paced every 1 ms) as long as a slot is free, for latency at a
given load.  After ``--warmup`` seconds the measuring window of ``--seconds`` starts: replies
received in the window count for throughput; latencies of requests sent and answered in it give
p50/p99/p999.  CPU: ``/proc/PID/stat`` utime+stime of each ``--pid NAME=PID`` and of this process,
sampled at the window's edges, divided by the transactions of the window; split into the main thread
(tid == pid, the event loop) and the other threads (``/proc/PID/task/TID/stat``, by ``comm`` name), with
context switches per transaction (voluntary + involuntary, ``/proc/PID/task/TID/status``) split the
same way.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _fastcore import crypto  # noqa: E402
from _fastcore.framing import FrameSplitter  # noqa: E402
from switch import h2h  # noqa: E402
from switch.flows import wire  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MERCHANT_ID = "898310048990001"
DEFAULT_PAN = "6212340000000001"  # Luhn-valid; bench_switch provisions it at the issuer
DEFAULT_PIN = "123456"


def terminal_id(i: int) -> str:
    return f"LG{i:06d}"


def luhn_complete(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def _stat_ticks(path: str) -> int:
    """utime + stime in clock ticks from a ``/proc/.../stat`` file (fields 14 and 15 of proc(5), counted
    after the ``)`` that ends the comm field, which may itself hold spaces and brackets)."""
    with open(path, "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads, exited ones included) in clock ticks."""
    return _stat_ticks(f"/proc/{pid}/stat")


def main_thread_ticks(pid: int) -> int:
    """utime + stime of the main thread (the event loop) only; the rest of ``cpu_ticks`` is other threads."""
    return _stat_ticks(f"/proc/{pid}/task/{pid}/stat")


def context_switches(status: bytes) -> int:
    """voluntary + involuntary context switches from a ``/proc/.../status`` file."""
    total = 0
    for line in status.splitlines():
        if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
            total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class TaskSample:
    """One thread at one instant: its name (``comm``, "python" unless the thread set one), CPU and switches."""

    comm: str
    ticks: int  # utime + stime
    switches: int  # voluntary + involuntary context switches


@dataclass(frozen=True)
class CpuSample:
    """A process at one instant: its total ticks (exited threads included) and each live thread by tid."""

    ticks: int
    tasks: dict[int, TaskSample]


def task_sample(pid: int, tid: int) -> TaskSample | None:
    """``/proc/PID/task/TID``'s stat, comm and status; None if the thread exited meanwhile."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        ticks = _stat_ticks(base + "/stat")
        with open(base + "/comm", "rb") as f:
            comm = f.read().decode(errors="replace").strip()
        with open(base + "/status", "rb") as f:
            switches = context_switches(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None
    return TaskSample(comm, ticks, switches)


def cpu_sample(pid: int) -> CpuSample:
    ticks = cpu_ticks(pid)
    tasks = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        sample = task_sample(pid, int(entry))
        if sample is not None:
            tasks[int(entry)] = sample
    return CpuSample(ticks, tasks)


def per_txn(value: float, n: int, digits: int = 1) -> float | None:
    return round(value / n, digits) if n else None


def cpu_report(pid: int, before: CpuSample, after: CpuSample, n: int, wall: float) -> dict[str, Any]:
    """CPU and context switches of one process over the window, per transaction, split into the main
    thread (tid == pid: the event loop) and the other threads (by comm name).  CPU of the other threads
    is the process total minus the main thread, so it includes threads that exited in the window;
    context switches have no process total in /proc: they are summed over the threads alive at the end
    (a thread started in the window counts from 0, one that exited in it is missed)."""
    secs = (after.ticks - before.ticks) / CLK_TCK
    out: dict[str, Any] = {"cpu_s": round(secs, 3), "us_per_txn": per_txn(secs * 1e6, n), "cores": round(secs / wall, 3)}
    if pid not in before.tasks or pid not in after.tasks:
        return out
    main_s = (after.tasks[pid].ticks - before.tasks[pid].ticks) / CLK_TCK
    main_cs = after.tasks[pid].switches - before.tasks[pid].switches
    by_name: dict[str, dict[str, int]] = {}
    for tid, task in after.tasks.items():
        if tid == pid:
            continue
        prev = before.tasks.get(tid)
        if prev is not None and prev.comm != task.comm:  # renamed meanwhile: file it under the new name
            prev = TaskSample(task.comm, prev.ticks, prev.switches)
        acc = by_name.setdefault(task.comm, {"threads": 0, "ticks": 0, "switches": 0})
        acc["threads"] += 1
        acc["ticks"] += task.ticks - (prev.ticks if prev else 0)
        acc["switches"] += task.switches - (prev.switches if prev else 0)
    other_cs = sum(acc["switches"] for acc in by_name.values())
    out.update({
        "main_thread_us_per_txn": per_txn(main_s * 1e6, n),
        "other_threads_us_per_txn": per_txn((secs - main_s) * 1e6, n),
        "cs_per_txn": per_txn(main_cs + other_cs, n, 2),
        "main_thread_cs_per_txn": per_txn(main_cs, n, 2),
        "other_threads_cs_per_txn": per_txn(other_cs, n, 2),
        "other_threads": {name: {"threads": acc["threads"], "us_per_txn": per_txn(acc["ticks"] / CLK_TCK * 1e6, n),
                                 "cs_per_txn": per_txn(acc["switches"], n, 2)}
                          for name, acc in sorted(by_name.items())},
    })
    return out


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns) - 1e-9) - 1))  # rank ceil(q n)
    return sorted_ns[k] / 1e6


# ------------------------------------------------------------------ request templates

class PosTemplate:
    """A MACed 0200 swipe+PIN sale of one signed-on terminal; ``build(stan)`` patches 11 and 64."""

    def __init__(self, tpdu: bytes, header: bytes, doc: dict[str, str], mak: bytes) -> None:
        self.mak = mak
        b1 = wire.encode({**doc, "11": "000001", "64": "0" * 16})
        b2 = wire.encode({**doc, "11": "999998", "64": "0" * 16})
        off = _first_diff(b1, b2)
        if b1[off:off + 3] != bytes.fromhex("000001") or len(b1) != len(b2):
            raise ValueError("cannot locate field 11 in the template")
        self.stan_off = off
        self.prefix = len(tpdu + header + b1).to_bytes(2, "big") + tpdu + header
        self.body = bytearray(b1)

    def build(self, stan: int) -> bytes:
        body = self.body
        off = self.stan_off
        s = f"{stan:06d}"
        body[off:off + 3] = bytes.fromhex(s)
        mac = crypto.mac_pos_ecb(self.mak, bytes(body[:-8]))
        body[-8:] = mac
        return self.prefix + bytes(body)


class H2HTemplate:
    """The switch's upstream 0200 sale; ``build(stan)`` patches 11 (6 digits) and 37 (12 chars)."""

    def __init__(self, doc: dict[str, str], rrn_prefix: str) -> None:
        stan_mark, rrn_mark = "735193", rrn_prefix + "862471"  # values that occur nowhere else
        b1 = h2h.encode({**doc, "11": stan_mark, "37": rrn_mark})
        if b1.count(stan_mark.encode()) != 1 or b1.count(rrn_mark.encode()) != 1:
            raise ValueError("cannot locate fields 11/37 in the template")
        stan_off, rrn_off = b1.index(stan_mark.encode()), b1.index(rrn_mark.encode())
        self.stan_off, self.rrn_off, self.rrn_prefix = stan_off, rrn_off, rrn_prefix
        self.body = bytearray(b1)
        self.prefix = len(b1).to_bytes(2, "big")

    def build(self, stan: int) -> bytes:
        s = f"{stan:06d}".encode()
        body = self.body
        body[self.stan_off:self.stan_off + 6] = s
        body[self.rrn_off + 6:self.rrn_off + 12] = s
        return self.prefix + bytes(body)


def _first_diff(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    raise ValueError("templates do not differ")


# ------------------------------------------------------------------ the generator

@dataclass
class Stats:
    sent: int = 0
    replies: int = 0
    window_replies: int = 0
    rc: collections.Counter[str] = field(default_factory=collections.Counter)
    lat_ns: list[int] = field(default_factory=list)
    lost: int = 0
    late_starts: int = 0  # rate mode: starts skipped because every slot was busy (closed-loop cap)


class Conn(asyncio.Protocol):
    """One connection; ``slots`` requests outstanding at most; replies matched on field 11."""

    def __init__(self, gen: LoadGen, template: Any, slots: int, stan_start: int, h2h_mode: bool) -> None:
        self.gen = gen
        self.template = template
        self.slots = slots
        self.stan = stan_start
        self.h2h_mode = h2h_mode
        self.sent: dict[str, int] = {}
        self.splitter = FrameSplitter(65535, 1)
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.gen.stats.lost += len(self.sent)
        self.sent.clear()

    @property
    def free(self) -> int:
        return self.slots - len(self.sent)

    def send_one(self) -> None:
        self.stan = self.stan % 999999 + 1
        key = f"{self.stan:06d}"
        frame = self.template.build(self.stan)
        self.sent[key] = time.perf_counter_ns()
        self.gen.stats.sent += 1
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        for payload in self.splitter.feed(data):
            now = time.perf_counter_ns()
            doc = h2h.decode(payload) if self.h2h_mode else wire.decode(payload[wire.PREFIX_LEN:])
            t0 = self.sent.pop(doc.get("11", ""), None)
            if t0 is None:
                continue
            gen.on_reply(self, t0, now, doc.get("39", "??"))


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.running = False
        self.window: tuple[int, int] = (0, 0)  # perf_counter_ns window bounds
        self.conns: list[Conn] = []

    def on_reply(self, conn: Conn, t0: int, now: int, rc: str) -> None:
        st = self.stats
        st.replies += 1
        w0, w1 = self.window
        if w0 <= now < w1:
            st.window_replies += 1
            st.rc[rc] += 1
            if t0 >= w0:
                st.lat_ns.append(now - t0)
        if self.running and self.args.rate is None:
            conn.send_one()

    async def connect_all(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        n = args.terminals
        per = [args.in_flight // n + (1 if i < args.in_flight % n else 0) for i in range(n)]
        for i in range(n):
            template = await (self._pos_template(i) if args.mode == "pos" else self._h2h_template(i))
            conn = Conn(self, template, max(per[i], 1), args.stan_start - 1, args.mode == "h2h")
            await loop.create_connection(lambda c=conn: c, args.host, args.port)
            self.conns.append(conn)

    async def _pos_template(self, i: int) -> PosTemplate:
        from switch.sim_terminal import DEFAULT_HEADER, DEFAULT_TPDU, SimCard, SimTerminal
        from switch.testbed import test_tmk

        term = SimTerminal(self.args.host, self.args.port, terminal_id(i), MERCHANT_ID, test_tmk(i))
        await term.connect()
        try:
            reply = await term.sign_on()
            if not reply.approved:
                raise SystemExit(f"sign-on of {terminal_id(i)} failed: 39={reply.rc}")
            card = SimCard(pan=self.args.pan, pin=DEFAULT_PIN)
            doc = term._base("0200", "000000", "22")
            doc.update({"4": f"{self.args.amount:012d}", "25": "00", "49": "156"})
            term._card_fields(doc, card, self.args.entry, card.pin, self.args.amount)
            assert term._mak is not None
            return PosTemplate(DEFAULT_TPDU, DEFAULT_HEADER, doc, term._mak)
        finally:
            await term.close()

    async def _h2h_template(self, i: int) -> H2HTemplate:
        args = self.args
        zpk = bytes.fromhex(args.zpk)
        pin_block = crypto.encrypt_pin_block(zpk, DEFAULT_PIN, args.pan, crypto.PIN_ISO0).hex().upper()
        track2 = f"{args.pan}=30122010000000000"[:37]
        doc = h2h.financial_request("sale", terminal_id=terminal_id(i), merchant_id=MERCHANT_ID,
                                    rrn="0" * 12, amount=args.amount, track2=track2, entry_mode="021",
                                    pin_block=pin_block, acquirer_id="48020000")
        rrn_prefix = f"{args.stan_start // 1000 % 100:02d}{i:04d}"[:6]
        return H2HTemplate(doc, rrn_prefix)

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.connect_all()
        loop = asyncio.get_running_loop()
        self.running = True
        t_start = time.perf_counter_ns()
        w0 = t_start + int(args.warmup * 1e9)
        w1 = w0 + int(args.seconds * 1e9)
        self.window = (w0, w1)
        pacer = None
        if args.rate is None:
            for conn in self.conns:
                for _ in range(conn.slots):
                    conn.send_one()
        else:
            pacer = loop.create_task(self._pace(args.rate, t_start, w1))
        await asyncio.sleep((w0 - time.perf_counter_ns()) / 1e9)
        cpu0 = self._cpu()
        wall0 = time.perf_counter_ns()
        await asyncio.sleep(max(0.0, (w1 - time.perf_counter_ns()) / 1e9))
        cpu1 = self._cpu()
        wall1 = time.perf_counter_ns()
        self.running = False
        if pacer is not None:
            pacer.cancel()
        # drain what is still outstanding (bounded), then close
        for _ in range(250):
            if not any(c.sent for c in self.conns):
                break
            await asyncio.sleep(0.02)
        outstanding = sum(len(c.sent) for c in self.conns)
        for c in self.conns:
            c.transport.close()
        return self._report(cpu0, cpu1, (wall1 - wall0) / 1e9, outstanding)

    async def _pace(self, rate: float, t_start: int, t_end: int) -> None:
        sent = 0
        ring = collections.deque(self.conns)
        while time.perf_counter_ns() < t_end:
            due = int((time.perf_counter_ns() - t_start) / 1e9 * rate) - sent
            while due > 0:
                for _ in range(len(ring)):
                    conn = ring[0]
                    ring.rotate(-1)
                    if conn.free > 0:
                        conn.send_one()
                        sent += 1
                        due -= 1
                        break
                else:
                    self.stats.late_starts += due
                    sent += due  # skipped: closed-loop cap reached (reported as late_starts)
                    break
            await asyncio.sleep(0.001)

    def _pids(self) -> dict[str, int]:
        return {**dict(self.args.pid), "loadgen": os.getpid()}

    def _cpu(self) -> dict[str, CpuSample]:
        return {name: cpu_sample(pid) for name, pid in self._pids().items()}

    def _report(self, cpu0: dict[str, CpuSample], cpu1: dict[str, CpuSample], wall: float,
                outstanding: int) -> dict[str, Any]:
        st = self.stats
        lat = sorted(st.lat_ns)
        n = st.window_replies
        approved = st.rc.get("00", 0)
        cpu = {name: cpu_report(pid, cpu0[name], cpu1[name], n, wall) for name, pid in self._pids().items()}
        return {
            "mode": self.args.mode, "terminals": self.args.terminals, "in_flight": self.args.in_flight,
            "rate": self.args.rate, "window_s": round(wall, 3), "txns": n,
            "tps": round(n / wall, 1) if wall else 0.0, "approved": approved,
            "rc": dict(st.rc), "p50_ms": round(percentile(lat, 0.50), 3), "p99_ms": round(percentile(lat, 0.99), 3),
            "p999_ms": round(percentile(lat, 0.999), 3), "max_ms": round(lat[-1] / 1e6, 3) if lat else None,
            "latency_samples": len(lat), "sent": st.sent, "replies": st.replies, "lost": st.lost,
            "unanswered_at_end": outstanding, "late_starts": st.late_starts, "cpu": cpu,
        }


def _pid_arg(value: str) -> tuple[str, int]:
    name, sep, pid = value.partition("=")
    if not sep or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {value!r}")
    return name, int(pid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="closed-loop POS / H2H load generator (prints one JSON object)")
    p.add_argument("--mode", choices=("pos", "h2h"), default="pos")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--terminals", type=int, default=8, help="connections (pos: terminals LG000000..)")
    p.add_argument("--in-flight", type=int, default=64, help="requests outstanding in total")
    p.add_argument("--rate", type=float, default=None, help="target requests/s (default: as fast as replies come)")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--pid", type=_pid_arg, action="append", default=[], metavar="NAME=PID",
                   help="process whose CPU time per transaction to report (repeatable)")
    p.add_argument("--pan", default=DEFAULT_PAN)
    p.add_argument("--amount", type=int, default=1, help="fen per sale")
    p.add_argument("--entry", choices=("swipe", "chip", "contactless"), default="swipe",
                   help="pos: card entry (chip/contactless carry field 55 with an ARQC; one per connection)")
    p.add_argument("--stan-start", type=int, default=1, help="first STAN (keep runs against one switch apart)")
    p.add_argument("--zpk", default="0123456789ABCDEFFEDCBA9876543210", help="h2h: clear test ZPK (hex)")
    p.add_argument("--no-uvloop", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.in_flight < args.terminals:
        args.in_flight = args.terminals
    if not args.no_uvloop:
        import uvloop

        uvloop.install()
    result = asyncio.run(LoadGen(args).run())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
