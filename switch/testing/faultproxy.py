"""A fault-injecting TCP proxy for resilience tests: delay, drop, cut, duplicate, reorder, split, corrupt.

Put it between terminals and the switch, or between the switch and an issuer, and program a
:class:`FaultPlan` per direction (``proxy.up``: client → target, ``proxy.down``: target → client).
The proxy is frame-aware for the 2-byte big-endian length framing both the POS dialect and the H2H
link use, so a rule acts on whole messages; with ``framed=False`` every received chunk is one unit.

Rules are consumed in order: for each frame the first rule that still has frames left and whose
``match`` accepts the frame's payload (the bytes after the length prefix) is applied, and only that
one.  ``count=None`` makes a rule apply to every matching frame.  Every rule method returns the
:class:`Rule`, whose ``hits`` counter and ``await rule.wait()`` tell a test that the fault happened::

    proxy = FaultProxy("127.0.0.1", switch_port)
    port = await proxy.start()
    proxy.up.duplicate(match=pos_mti("0200"))      # the next sale request arrives twice
    dropped = proxy.down.drop(match=h2h_mti("0210"))
    ...
    await dropped.wait(5)
    await proxy.stop()

Faults: ``delay`` (hold frames back, order kept, like a slow link), ``drop`` (the frame vanishes),
``cut`` (forward the first ``after_bytes`` bytes of the matching frame, length prefix included, then
close both connections), ``duplicate`` (send the frame again right after itself), ``reorder`` (hold the
frame and send it after the next frame of that direction, or after ``max_hold_ms``), ``split`` (send
the frame in ``chunk``-byte writes ``gap_ms`` apart), ``drop_bytes`` (remove bytes inside a frame, so
the receiver loses the framing) and ``corrupt`` (flip the bits of one byte, e.g. the MAC).
``cut_all()`` cuts every live connection; ``refuse = True`` closes new connections at once (a process
that died); ``await pause()`` / ``await resume()`` stop and restart listening on the same port (a host
that is down).  The proxy never logs message contents (they carry PANs), only directions, actions and
sizes.  It applies no back-pressure of its own (test traffic only).

From a shell (e.g. in front of ``posswitch serve`` for manual chaos with ``posswitch terminal``)::

    python -m switch.testing.faultproxy --listen 127.0.0.1:6000 --target 127.0.0.1:5000 \
        --up duplicate@0200 --down delay:300 --down drop:1@0210
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from switch.logsafe import configure_logging, kv

log = logging.getLogger("switch.testing.faultproxy")

Match = Callable[[bytes], bool]

UP = "up"
DOWN = "down"
ACTIONS = ("delay", "drop", "cut", "duplicate", "reorder", "split", "drop_bytes", "corrupt")


def pos_mti(*mtis: str) -> Match:
    """Match POS-dialect payloads (TPDU 5 + header 6, then a BCD MTI) whose MTI is one of ``mtis``."""
    wanted = frozenset(bytes.fromhex(m) for m in mtis)
    return lambda payload: payload[11:13] in wanted


def h2h_mti(*mtis: str) -> Match:
    """Match H2H payloads (ASCII MTI first) whose MTI is one of ``mtis``."""
    wanted = frozenset(m.encode() for m in mtis)
    return lambda payload: payload[:4] in wanted


def hsm_cmd(*codes: str, header_len: int = 4) -> Match:
    """Match payShield-style HSM frames (``header_len``-byte header, then a 2-letter command or reply
    code such as ``CA``/``CB``, ``M6``/``M7``) whose code is one of ``codes``."""
    wanted = frozenset(c.encode() for c in codes)
    return lambda payload: payload[header_len:header_len + 2] in wanted


@dataclass(eq=False)
class Rule:
    """One programmed fault; ``count`` frames left (None: unlimited), ``hits`` applied so far."""

    action: str
    count: int | None = 1
    match: Match | None = None
    delay: float = 0.0  # seconds (delay)
    after_bytes: int = 0  # cut
    copies: int = 1  # duplicate
    chunk: int = 1  # split
    gap: float = 0.0  # split, seconds between chunks
    max_hold: float = 1.0  # reorder
    offset: int = 0  # drop_bytes / corrupt: position in the frame (length prefix included; < 0 from the end)
    nbytes: int = 1  # drop_bytes
    xor: int = 0xFF  # corrupt
    hits: int = 0
    fired: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; expected one of {', '.join(ACTIONS)}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1 or None, got {self.count}")
        if not 0 < self.xor < 256 or self.nbytes < 1:
            raise ValueError(f"bad parameters for {self.action}: xor must be 1..255 and nbytes >= 1")
        if self.delay < 0 or self.gap < 0 or self.after_bytes < 0 or self.chunk < 1 or self.copies < 1:
            raise ValueError(f"bad parameters for {self.action}: negative delay/gap/after_bytes or chunk/copies < 1")

    @property
    def exhausted(self) -> bool:
        return self.count == 0

    def applies(self, payload: bytes) -> bool:
        return self.count != 0 and (self.match is None or bool(self.match(payload)))

    def _consume(self) -> None:
        self.hits += 1
        if self.count is not None:
            self.count -= 1
        self.fired.set()

    async def wait(self, timeout: float = 5.0) -> None:
        """Return once the rule has been applied at least once (TimeoutError after ``timeout`` s)."""
        await asyncio.wait_for(self.fired.wait(), timeout)


class FaultPlan:
    """The programmed faults of one direction, shared by every connection through the proxy."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.rules: list[Rule] = []
        self.frames = 0  # frames (or chunks) seen in this direction, all connections
        self.bytes = 0

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def delay(self, ms: float, *, count: int | None = None, match: Match | None = None) -> Rule:
        """Hold matching frames back ``ms`` milliseconds (later frames queue behind them)."""
        return self.add(Rule("delay", count, match, delay=ms / 1000.0))

    def drop(self, count: int | None = 1, *, match: Match | None = None) -> Rule:
        return self.add(Rule("drop", count, match))

    def cut(self, after_bytes: int = 0, *, match: Match | None = None) -> Rule:
        """When a matching frame arrives, forward its first ``after_bytes`` bytes, then close both sides."""
        return self.add(Rule("cut", 1, match, after_bytes=after_bytes))

    def duplicate(self, count: int | None = 1, *, copies: int = 1, match: Match | None = None) -> Rule:
        return self.add(Rule("duplicate", count, match, copies=copies))

    def reorder(self, count: int | None = 1, *, max_hold_ms: float = 1000.0, match: Match | None = None) -> Rule:
        """Hold a matching frame until the next frame of this direction has been sent (or ``max_hold_ms``)."""
        return self.add(Rule("reorder", count, match, max_hold=max_hold_ms / 1000.0))

    def split(self, chunk: int = 1, *, gap_ms: float = 1.0, count: int | None = 1,
              match: Match | None = None) -> Rule:
        """Send matching frames in ``chunk``-byte writes, ``gap_ms`` apart."""
        return self.add(Rule("split", count, match, chunk=chunk, gap=gap_ms / 1000.0))

    def drop_bytes(self, nbytes: int = 1, *, offset: int = 0, match: Match | None = None) -> Rule:
        """Remove ``nbytes`` bytes at ``offset`` of the next matching frame: the receiver loses framing."""
        return self.add(Rule("drop_bytes", 1, match, offset=offset, nbytes=nbytes))

    def corrupt(self, offset: int = -1, *, xor: int = 0xFF, count: int | None = 1,
                match: Match | None = None) -> Rule:
        """XOR the byte at ``offset`` of matching frames (``-1`` = last byte, e.g. the MAC)."""
        return self.add(Rule("corrupt", count, match, offset=offset, xor=xor))

    def clear(self) -> None:
        self.rules.clear()

    def pick(self, payload: bytes) -> Rule | None:
        for rule in self.rules:
            if rule.applies(payload):
                return rule
        return None


class _Pipe:
    """One direction of one proxied connection: splits frames, applies the plan, writes in order."""

    def __init__(self, conn: _Connection, plan: FaultPlan, framed: bool) -> None:
        self.conn = conn
        self.plan = plan
        self.framed = framed
        self.dest: Any = None  # transport of the receiving side, once connected
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.queue: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self.last_when = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.held: list[bytes] = []
        self.held_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- input
    def feed(self, data: bytes) -> None:
        self.plan.bytes += len(data)
        if not self.framed:
            self._unit(bytes(data), bytes(data))
            return
        buf = self.buf
        buf += data
        while len(buf) >= 2 and not self.conn.cut_done:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            frame = bytes(buf[:2 + n])
            del buf[:2 + n]
            self._unit(frame, frame[2:])

    def _unit(self, frame: bytes, payload: bytes) -> None:
        self.plan.frames += 1
        rule = self.plan.pick(payload)
        if rule is None:
            self._out(frame)
            self._release_held()
            return
        rule._consume()
        action = rule.action
        self.conn.proxy._event(self.plan.direction, action, len(frame))
        if action == "drop":
            return
        if action == "reorder":
            self.held.append(frame)
            if self.held_timer is None:
                self.held_timer = self.loop.call_later(rule.max_hold, self._release_held)
            return
        if action == "cut":
            if rule.after_bytes:
                self._out(frame[:rule.after_bytes])
            self._release_held()
            self.queue_action("cut")
            return
        if action == "delay":
            self._out(frame, delay=rule.delay)
        elif action == "drop_bytes":
            at = rule.offset % len(frame) if rule.offset < 0 else min(rule.offset, len(frame))
            self._out(frame[:at] + frame[at + rule.nbytes:])
        elif action == "corrupt":
            if -len(frame) <= rule.offset < len(frame):
                mangled = bytearray(frame)
                mangled[rule.offset] ^= rule.xor
                frame = bytes(mangled)
            self._out(frame)
        elif action == "duplicate":
            for _ in range(1 + rule.copies):
                self._out(frame)
        else:  # split
            for i in range(0, len(frame), rule.chunk):
                self._out(frame[i:i + rule.chunk], gap=rule.gap if i else 0.0)
        self._release_held()

    def _release_held(self) -> None:
        if self.held_timer is not None:
            self.held_timer.cancel()
            self.held_timer = None
        held, self.held = self.held, []
        for frame in held:
            self._out(frame)

    # ---------------------------------------------------------------- ordered output
    def _out(self, data: bytes, delay: float = 0.0, gap: float = 0.0) -> None:
        if not data:
            return
        now = self.loop.time()
        when = max(now + delay, self.last_when) + gap
        self.last_when = when
        self.queue.append((when, "data", data))
        self.pump()

    def queue_action(self, kind: str) -> None:
        """``close`` (after pending data) or ``cut`` (both connections) in stream order."""
        now = self.loop.time()
        self.last_when = max(now, self.last_when)
        self.queue.append((self.last_when, kind, b""))
        self.pump()

    def pump(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.dest is None:
            return
        now = self.loop.time()
        queue = self.queue
        while queue:
            when, kind, data = queue[0]
            if when > now:
                self.timer = self.loop.call_at(when, self.pump)
                return
            queue.popleft()
            if kind == "data":
                if not self.dest.is_closing():
                    self.dest.write(data)
            elif kind == "close":
                self.dest.close()
            else:
                self.conn.cut()
                return

    def discard(self) -> None:
        for handle in (self.timer, self.held_timer):
            if handle is not None:
                handle.cancel()
        self.timer = self.held_timer = None
        self.queue.clear()
        self.held.clear()


class _Side(asyncio.Protocol):
    def __init__(self, conn: _Connection, pipe_in: _Pipe) -> None:
        self.conn = conn
        self.pipe_in = pipe_in  # the pipe this side's received bytes go into

    def data_received(self, data: bytes) -> None:
        if not self.conn.cut_done:
            self.pipe_in.feed(data)

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost forwards the close in order

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self)


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.client = transport
        self.conn.down.dest = transport
        proxy = self.conn.proxy
        if proxy.refuse or proxy.closing:
            proxy.connections.discard(self.conn)
            transport.close()
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        self.conn.task = asyncio.get_running_loop().create_task(self.conn.connect_target())


class _TargetSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.target = transport
        self.conn.up.dest = transport
        self.conn.up.pump()


class _Connection:
    """A client connection and its own connection to the target."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client: Any = None
        self.target: Any = None
        self.up = _Pipe(self, proxy.up, proxy.framed)
        self.down = _Pipe(self, proxy.down, proxy.framed)
        self.cut_done = False
        self.closed_sides = 0
        self.task: asyncio.Task[None] | None = None

    async def connect_target(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _TargetSide(self, self.down), self.proxy.target_host,
                                         self.proxy.target_port)
        except OSError as exc:
            log.info("target unreachable", extra=kv(port=self.proxy.target_port, error=str(exc)))
            self.proxy.connections.discard(self)
            if self.client is not None:
                self.client.close()
            return
        if self.cut_done:  # cut while the target connection was being opened
            if self.target is not None:
                self.target.close()
            return
        if self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    def side_lost(self, side: _Side) -> None:
        self.closed_sides += 1
        if self.cut_done:
            return
        side.pipe_in.queue_action("close")  # close the other end once this side's bytes are through
        if self.closed_sides >= 2:
            self.proxy.connections.discard(self)

    def cut(self) -> None:
        if self.cut_done:
            return
        self.cut_done = True
        self.up.discard()
        self.down.discard()
        for transport in (self.client, self.target):
            if transport is not None and not transport.is_closing():
                transport.close()
        self.proxy.connections.discard(self)
        self.proxy.cuts += 1


class FaultProxy:
    """Listen on ``host:port`` and relay each connection to ``target_host:target_port`` through the plans."""

    def __init__(self, target_host: str, target_port: int, *, framed: bool = True, history: int = 1000) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.framed = framed
        self.up = FaultPlan(UP)
        self.down = FaultPlan(DOWN)
        self.connections: set[_Connection] = set()
        self.accepted = 0
        self.cuts = 0
        self.refuse = False
        self.closing = False
        self.events: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=history)
        self._server: asyncio.base_events.Server | None = None
        self._host = "127.0.0.1"
        self.port: int = 0

    def _accept(self) -> _ClientSide:
        self.accepted += 1
        conn = _Connection(self)
        self.connections.add(conn)
        return _ClientSide(conn, conn.up)

    def _event(self, direction: str, action: str, size: int) -> None:
        self.events.append((direction, action, size))
        log.info("fault", extra=kv(direction=direction, action=action, bytes=size, target=self.target_port))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, reuse_address=True)
        self._host = host
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def pause(self) -> None:
        """Stop listening (new connections are refused by the OS, like a host that is down) and cut
        every live connection.  ``refuse`` instead accepts and closes at once (a process that dies)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut_all()
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass

    async def resume(self) -> None:
        """Listen again on the same port after :meth:`pause`."""
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(self._accept, self._host, self.port, reuse_address=True)

    def cut_all(self) -> int:
        """Cut every live connection now; returns how many were cut."""
        conns = list(self.connections)
        for conn in conns:
            conn.cut()
        return len(conns)

    async def stop(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        self.cut_all()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def add_rule_spec(plan: FaultPlan, spec: str, dialect: str = "pos") -> Rule:
    """Program ``plan`` from a command-line spec ``ACTION[:N][@MTI,MTI..]``.

    ``N`` is the action's number: milliseconds for ``delay`` (every matching frame), bytes to let through
    for ``cut``, chunk size for ``split`` (2 ms apart), frame count for ``drop``/``duplicate``/``reorder``
    (``*`` = every matching frame); ``drop_bytes:N`` removes N bytes right after the length prefix,
    ``corrupt[:N]`` flips the last byte (the MAC) of N frames.  ``@0200,0400`` restricts the rule to those MTIs (POS or H2H
    dialect).  Examples: ``delay:50``, ``drop:1@0210``, ``cut:0@0210``, ``duplicate@0200``, ``split:1``.
    """
    body, _, mtis = spec.partition("@")
    action, _, arg = body.partition(":")
    if action not in ACTIONS:
        raise ValueError(f"fault spec {spec!r}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    match = None
    if mtis:
        codes = mtis.split(",")
        if not all(len(c) == 4 and c.isdigit() for c in codes):
            raise ValueError(f"fault spec {spec!r}: MTIs after @ must be 4 digits, comma-separated")
        match = pos_mti(*codes) if dialect == "pos" else h2h_mti(*codes)
    if arg and arg != "*" and not arg.isdigit():
        raise ValueError(f"fault spec {spec!r}: {arg!r} is not a number")
    n = None if arg == "*" else int(arg) if arg else None
    if action == "delay":
        return plan.delay(float(n or 0), match=match)
    if action == "cut":
        return plan.cut(n or 0, match=match)
    if action == "split":
        return plan.split(n or 1, gap_ms=2.0, count=None, match=match)
    if action == "drop_bytes":
        return plan.drop_bytes(n or 1, offset=2, match=match)  # right after the length prefix
    count = None if arg == "*" else (n or 1)
    if action == "drop":
        return plan.drop(count, match=match)
    if action == "duplicate":
        return plan.duplicate(count, match=match)
    if action == "corrupt":
        return plan.corrupt(-1, count=count, match=match)  # the last byte: the MAC of a MACed message
    return plan.reorder(count, match=match)


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m switch.testing.faultproxy --listen H:P --target H:P [--up SPEC].. [--down SPEC]..``"""
    p = argparse.ArgumentParser(prog="python -m switch.testing.faultproxy",
                                description="fault-injecting TCP proxy (2-byte length framing)")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), metavar="HOST:PORT")
    p.add_argument("--target", type=_hostport, required=True, metavar="HOST:PORT")
    p.add_argument("--dialect", choices=("pos", "h2h"), default="pos", help="how @MTI filters read a frame")
    p.add_argument("--up", action="append", default=[], metavar="SPEC", help="client -> target fault (repeatable)")
    p.add_argument("--down", action="append", default=[], metavar="SPEC", help="target -> client fault")
    p.add_argument("--raw", action="store_true", help="not framed: every received chunk is one unit")
    args = p.parse_args(argv)
    configure_logging("INFO")

    async def run() -> None:
        proxy = FaultProxy(*args.target, framed=not args.raw)
        try:
            for spec in args.up:
                add_rule_spec(proxy.up, spec, args.dialect)
            for spec in args.down:
                add_rule_spec(proxy.down, spec, args.dialect)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        port = await proxy.start(*args.listen)
        print(f"faultproxy listening on {args.listen[0]}:{port} -> {args.target[0]}:{args.target[1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await proxy.stop()

    asyncio.run(run())
    return 0


__all__ = ["FaultProxy", "FaultPlan", "Rule", "pos_mti", "h2h_mti", "hsm_cmd", "add_rule_spec", "UP", "DOWN",
           "ACTIONS"]

if __name__ == "__main__":
    sys.exit(main())
