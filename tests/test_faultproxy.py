"""The fault-injecting proxy (switch.testing.faultproxy) over real loopback TCP.

Behind the proxy sits a recording server: it keeps every byte it receives per connection and, in
echo mode, sends each complete frame back prefixed with ``b"E"``.  Each test programs one fault and
checks exactly what crossed the proxy (bytes, order, connection state).  Timing assertions are only
lower bounds (a delay can never make a frame arrive early).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.testing.faultproxy import FaultProxy, Rule, h2h_mti, pos_mti


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


class Recorder:
    """A loopback server that records what it receives (and echoes complete frames if asked)."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.received: list[bytearray] = []  # per connection
        self.eof: list[bool] = []
        self.changed = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        idx = len(self.received)
        self.received.append(buf)
        self.eof.append(False)
        pending = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                self.changed.set()
                if self.echo:
                    pending += data
                    while len(pending) >= 2 and len(pending) >= 2 + int.from_bytes(pending[:2], "big"):
                        n = int.from_bytes(pending[:2], "big")
                        writer.write(frame(b"E" + bytes(pending[2:2 + n])))
                        del pending[:2 + n]
        except ConnectionError:
            pass
        self.eof[idx] = True
        self.changed.set()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def wait_bytes(self, n: int, conn: int = 0, timeout: float = 5.0) -> bytes:
        async def until() -> None:
            while len(self.received) <= conn or len(self.received[conn]) < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), timeout)
        return bytes(self.received[conn])

    async def wait_eof(self, conn: int = 0, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.eof) <= conn or not self.eof[conn]:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), timeout)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def rec():
    r = Recorder()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def proxy(rec):
    p = FaultProxy("127.0.0.1", rec.port)
    await p.start()
    yield p
    await p.stop()


async def read_frames(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> list[bytes]:
    out = []
    for _ in range(n):
        hdr = await asyncio.wait_for(reader.readexactly(2), timeout)
        out.append(await asyncio.wait_for(reader.readexactly(int.from_bytes(hdr, "big")), timeout))
    return out


async def open_client(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_passthrough_both_directions_many_connections(proxy, rec):
    clients = [await open_client(proxy) for _ in range(3)]
    for i, (_, w) in enumerate(clients):
        w.write(frame(b"A%d" % i) + frame(b"B%d" % i))
    for i, (r, _) in enumerate(clients):
        assert await read_frames(r, 2) == [b"EA%d" % i, b"EB%d" % i]
    assert proxy.accepted == 3 and proxy.up.frames == 6 and proxy.down.frames == 6
    assert not proxy.events
    for _, w in clients:
        w.close()


async def test_drop_next_frame_only(proxy, rec):
    rule = proxy.up.drop()
    r, w = await open_client(proxy)
    w.write(frame(b"one") + frame(b"two"))
    assert await read_frames(r, 1) == [b"Etwo"]
    assert rule.hits == 1 and rule.exhausted
    assert bytes(rec.received[0]) == frame(b"two")
    w.write(frame(b"three"))
    assert await read_frames(r, 1) == [b"Ethree"]
    assert proxy.events[0] == ("up", "drop", 5)
    w.close()


async def test_drop_matching_reply_by_mti(proxy, rec):
    # the recorder echoes "E" + payload: match the echo of the second H2H request only
    proxy.down.drop(match=lambda p: p[1:5] == b"0210")
    r, w = await open_client(proxy)
    w.write(frame(b"0200AAA") + frame(b"0210BBB") + frame(b"0800CCC"))
    assert await read_frames(r, 2) == [b"E0200AAA", b"E0800CCC"]
    w.close()


def test_mti_matchers() -> None:
    pos = bytes.fromhex("6000030000" "603100311001") + bytes.fromhex("0200") + bytes(8)
    assert pos_mti("0200")(pos) and not pos_mti("0400", "0800")(pos) and pos_mti("0400", "0200")(pos)
    assert h2h_mti("0210")(b"0210F2...") and not h2h_mti("0200")(b"0210F2...")
    from switch.testing.faultproxy import hsm_cmd

    assert hsm_cmd("CA")(b"0001CAU...") and not hsm_cmd("CA")(b"0001CBxx") and hsm_cmd("M7", header_len=0)(b"M700")


async def test_delay_keeps_order_and_holds_at_least_the_delay(proxy, rec):
    proxy.up.delay(150, count=1)
    r, w = await open_client(proxy)
    t0 = time.monotonic()
    w.write(frame(b"slow"))
    await asyncio.sleep(0.01)
    w.write(frame(b"fast"))
    got = await read_frames(r, 2)
    assert got == [b"Eslow", b"Efast"]  # the undelayed frame queued behind the delayed one
    assert time.monotonic() - t0 >= 0.14
    w.close()


async def test_cut_after_bytes_inside_a_frame(proxy, rec):
    rule = proxy.up.cut(after_bytes=5)
    r, w = await open_client(proxy)
    w.write(frame(b"0123456789") + frame(b"never"))
    await rule.wait()
    await rec.wait_eof()
    assert bytes(rec.received[0]) == frame(b"0123456789")[:5]
    assert await asyncio.wait_for(r.read(), 5.0) == b""  # the client side is closed too
    assert proxy.cuts == 1 and not proxy.connections
    w.close()


async def test_cut_on_reply_after_request_went_through(proxy, rec):
    proxy.down.cut(match=lambda p: p.startswith(b"E"))
    r, w = await open_client(proxy)
    w.write(frame(b"request"))
    assert await asyncio.wait_for(r.read(), 5.0) == b""  # reply never arrives, connection closed
    assert bytes(rec.received[0]) == frame(b"request")  # but the target got the whole request
    w.close()


async def test_duplicate(proxy, rec):
    proxy.up.duplicate(copies=2)
    r, w = await open_client(proxy)
    w.write(frame(b"pay"))
    assert await read_frames(r, 3) == [b"Epay"] * 3
    assert bytes(await rec.wait_bytes(15)) == frame(b"pay") * 3
    w.close()


async def test_reorder_swaps_with_next_frame(proxy, rec):
    rule = proxy.up.reorder(match=lambda p: p == b"first")
    r, w = await open_client(proxy)
    w.write(frame(b"first"))
    await rule.wait()
    w.write(frame(b"second"))
    assert await read_frames(r, 2) == [b"Esecond", b"Efirst"]
    w.close()


async def test_reorder_releases_after_max_hold(proxy, rec):
    proxy.up.reorder(max_hold_ms=100)
    r, w = await open_client(proxy)
    t0 = time.monotonic()
    w.write(frame(b"alone"))
    assert await read_frames(r, 1) == [b"Ealone"]
    assert time.monotonic() - t0 >= 0.09
    w.close()


async def test_split_delivers_the_same_bytes_in_pieces(proxy, rec):
    proxy.down.split(chunk=3, gap_ms=20)
    r, w = await open_client(proxy)
    t0 = time.monotonic()
    w.write(frame(b"abcdefghij"))  # echo frame = 2 + 11 bytes = 5 chunks of 3
    assert await read_frames(r, 1) == [b"Eabcdefghij"]
    assert time.monotonic() - t0 >= 4 * 0.02 * 0.9
    w.close()


async def test_rule_order_first_match_wins_and_unlimited_count(proxy, rec):
    proxy.up.drop(count=None, match=lambda p: p.startswith(b"x"))
    dup = proxy.up.duplicate(count=None)
    r, w = await open_client(proxy)
    w.write(frame(b"x1") + frame(b"y1") + frame(b"x2") + frame(b"y2"))
    assert await read_frames(r, 4) == [b"Ey1", b"Ey1", b"Ey2", b"Ey2"]
    assert dup.hits == 2
    w.close()


async def test_client_close_is_forwarded_after_pending_data(proxy, rec):
    proxy.up.delay(100)
    _, w = await open_client(proxy)
    w.write(frame(b"bye"))
    w.close()
    await rec.wait_eof()
    assert bytes(rec.received[0]) == frame(b"bye")


async def test_unframed_mode_acts_per_chunk(rec):
    rec.echo = False
    async with FaultProxy("127.0.0.1", rec.port, framed=False) as p:
        p.up.drop()
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(b"\xff\xff garbage that is not framed")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"kept")
        assert await rec.wait_bytes(4) == b"kept"
        w.close()


async def test_refuse_and_cut_all(proxy, rec):
    r, w = await open_client(proxy)
    w.write(frame(b"hi"))
    assert await read_frames(r, 1) == [b"Ehi"]
    assert proxy.cut_all() == 1
    assert await asyncio.wait_for(r.read(), 5.0) == b""
    proxy.refuse = True
    r2, w2 = await open_client(proxy)
    assert await asyncio.wait_for(r2.read(), 5.0) == b""
    assert len(rec.received) == 1  # the refused client never reached the target
    w.close()
    w2.close()


async def test_unreachable_target_closes_client():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with FaultProxy("127.0.0.1", dead_port) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        assert await asyncio.wait_for(r.read(), 5.0) == b""
        w.close()


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="unknown fault action 'explode'"):
        Rule("explode")
    with pytest.raises(ValueError, match="count"):
        Rule("drop", count=0)
    with pytest.raises(ValueError, match="split"):
        Rule("split", chunk=0)


@settings(max_examples=25, deadline=None)
@given(payloads=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8),
       drop=st.sets(st.integers(0, 7)), dup=st.sets(st.integers(0, 7)),
       chunk=st.integers(1, 64))
def test_property_target_sees_exactly_the_planned_frames(payloads, drop, dup, chunk) -> None:
    """Frames written in arbitrary TCP chunks reach the target dropped/duplicated exactly as planned."""
    tagged = [bytes([i]) + x for i, x in enumerate(payloads)]  # first byte = index, for the matchers

    async def scenario() -> None:
        rec = Recorder(echo=False)
        await rec.start()
        async with FaultProxy("127.0.0.1", rec.port) as p:
            p.up.drop(count=None, match=lambda pl: pl[:1] != b"" and pl[0] in drop)
            p.up.duplicate(count=None, match=lambda pl: pl[:1] != b"" and pl[0] in dup)
            _, w = await asyncio.open_connection("127.0.0.1", p.port)
            stream = b"".join(frame(x) for x in tagged) + frame(b"\xffEND")
            for i in range(0, len(stream), chunk):
                w.write(stream[i:i + chunk])
                await w.drain()
            expected = b"".join(frame(x) * (0 if i in drop else 2 if i in dup else 1)
                                for i, x in enumerate(tagged)) + frame(b"\xffEND")
            got = await rec.wait_bytes(len(expected))
            w.close()
        await rec.stop()
        assert got == expected

    asyncio.run(scenario())


def test_rule_specs_from_the_command_line() -> None:
    from switch.testing.faultproxy import FaultPlan, add_rule_spec

    plan = FaultPlan("up")
    d = add_rule_spec(plan, "delay:50")
    assert (d.action, d.delay, d.count, d.match) == ("delay", 0.05, None, None)
    r = add_rule_spec(plan, "drop:2@0200,0400")
    pos = bytes(11) + bytes.fromhex("0400") + bytes(8)
    assert (r.action, r.count) == ("drop", 2) and r.match(pos) and not r.match(bytes(11) + b"\x08\x00")
    h = add_rule_spec(plan, "duplicate:*@0210", dialect="h2h")
    assert h.count is None and h.match(b"0210....") and not h.match(b"0200....")
    c = add_rule_spec(plan, "cut:20")
    assert (c.action, c.after_bytes, c.count) == ("cut", 20, 1)
    s = add_rule_spec(plan, "split:3")
    assert (s.chunk, s.count) == (3, None)
    assert add_rule_spec(plan, "reorder").count == 1
    for bad, msg in (("explode", "unknown action"), ("drop:x", "not a number"), ("drop@02", "4 digits")):
        with pytest.raises(ValueError, match=msg):
            add_rule_spec(plan, bad)


async def test_command_line_proxy_runs_as_a_process(rec):
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switch.testing.faultproxy", "--listen", "127.0.0.1:0", "--target",
        f"127.0.0.1:{rec.port}", "--up", "drop:1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("faultproxy listening on 127.0.0.1:")
        port = int(line.split()[3].rsplit(":", 1)[1])
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(frame(b"gone") + frame(b"kept"))
        assert await read_frames(r, 1) == [b"Ekept"]
        w.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert b"action=drop" in await proc.stderr.read()


async def test_drop_bytes_inside_a_frame(proxy, rec):
    rec.echo = False
    proxy.up.drop_bytes(3, offset=4)
    _, w = await open_client(proxy)
    w.write(frame(b"abcdefgh") + frame(b"next"))
    got = await rec.wait_bytes(len(frame(b"abcdefgh")) - 3 + len(frame(b"next")))
    assert got == frame(b"abcdefgh")[:4] + frame(b"abcdefgh")[7:] + frame(b"next")
    w.close()


async def test_corrupt_flips_one_byte_of_matching_frames(proxy, rec):
    rec.echo = False
    rule = proxy.up.corrupt(-1, xor=0x01, count=None, match=lambda p: p.startswith(b"M"))
    _, w = await open_client(proxy)
    w.write(frame(b"MAC1") + frame(b"plain") + frame(b"M"))
    got = await rec.wait_bytes(6 + 7 + 3)
    assert got == frame(b"MAC0") + frame(b"plain") + frame(b"L")
    assert rule.hits == 2
    w.close()


def test_byte_level_rule_specs_and_validation() -> None:
    from switch.testing.faultproxy import FaultPlan, add_rule_spec

    plan = FaultPlan("up")
    d = add_rule_spec(plan, "drop_bytes:5@0200")
    assert (d.action, d.nbytes, d.offset, d.count) == ("drop_bytes", 5, 2, 1)
    c = add_rule_spec(plan, "corrupt:*")
    assert (c.action, c.offset, c.count, c.xor) == ("corrupt", -1, None, 0xFF)
    with pytest.raises(ValueError, match="xor"):
        Rule("corrupt", xor=0)


async def test_pause_refuses_connections_and_resume_listens_on_the_same_port(proxy, rec):
    r, w = await open_client(proxy)
    port = proxy.port
    await proxy.pause()
    assert await asyncio.wait_for(r.read(), 5.0) == b""  # live connection cut
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # nobody listens: connection refused
    await proxy.resume()
    assert proxy.port == port
    r2, w2 = await open_client(proxy)
    w2.write(frame(b"back"))
    assert await read_frames(r2, 1) == [b"Eback"]
    w.close()
    w2.close()
