"""switch.hsm_client: pipelining, in-order matching, coalesced writes, timeouts, reconnects.

Runs against the real simulator over loopback, and against small scripted TCP peers where a
misbehaving HSM (slow, silent, out of sequence) is the point of the test.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from Crypto.Cipher import DES3
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.lmk import encrypt_under_lmk
from hsm_sim.server import start_hsm
from switch.hsm_client import HsmClient, HsmError, HsmTimeout, HsmUnavailable, account_number


class ScriptedHsm(asyncio.Protocol):
    """A peer that answers B2 echoes, holding replies until ``hold`` requests arrived, delaying
    ``SL`` requests, never answering ``DR`` and, with ``bad_header``, answering with a wrong header."""

    def __init__(self, hold: int = 1, delay: float = 0.0, bad_header: bool = False, silent: bool = False) -> None:
        self.hold, self.delay, self.bad_header, self.silent = hold, delay, bad_header, silent
        self.buf = bytearray()
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.delaying = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2 and len(self.buf) >= 2 + int.from_bytes(self.buf[:2], "big"):
            n = int.from_bytes(self.buf[:2], "big")
            frame = bytes(self.buf[2 : 2 + n])
            del self.buf[: 2 + n]
            self.received += 1
            header, cmd, body = frame[:4], frame[4:6], frame[6:]
            if self.bad_header:
                header = b"9999"
            if cmd == b"DR":  # this answer is lost on the way
                continue
            reply = header + cmd[:1] + bytes([cmd[1] + 1]) + b"00" + body[4:]
            self.pending.append(len(reply).to_bytes(2, "big") + reply)
            if cmd == b"SL":
                self.delaying = True
                asyncio.get_running_loop().call_later(self.delay, self._flush)
        if not self.silent and not self.delaying and len(self.pending) >= self.hold:
            self._flush()

    def _flush(self) -> None:
        self.delaying = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.pending))
        self.pending.clear()


async def scripted(**kw):
    peers: list[ScriptedHsm] = []

    def factory() -> ScriptedHsm:
        p = ScriptedHsm(**kw)
        peers.append(p)
        return p

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], peers


async def test_many_requests_in_flight_answered_in_order() -> None:
    """The peer answers nothing until 200 requests have arrived: only a pipelined client passes."""
    server, port, peers = await scripted(hold=200)
    try:
        async with await HsmClient.connect("127.0.0.1", port, timeout=5) as c:
            payloads = [os.urandom(8) + i.to_bytes(4, "big") for i in range(200)]
            results = await asyncio.gather(*(c.echo(p) for p in payloads))
            assert results == payloads
            assert peers[0].received == 200
    finally:
        server.close()


async def test_pipelined_translations_against_the_simulator() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    tpk_c, zpk_c = os.urandom(16), os.urandom(16)
    tpk, zpk = encrypt_under_lmk(tpk_c, "TPK"), encrypt_under_lmk(zpk_c, "ZPK")
    tpk_cipher = DES3.new(_clear_parity(tpk_c), DES3.MODE_ECB)
    zpk_cipher = DES3.new(_clear_parity(zpk_c), DES3.MODE_ECB)
    try:
        async with await HsmClient.connect("127.0.0.1", port) as c:
            pans = [f"62{i:014d}" + "9" for i in range(500)]
            pins = [f"{(i * 7919) % 10**6:06d}" for i in range(500)]
            blocks = [tpk_cipher.encrypt(_iso0(p, pan)) for p, pan in zip(pins, pans, strict=True)]
            outs = await asyncio.gather(
                *(c.translate_pin_tpk_to_zpk(tpk, zpk, b, pan) for b, pan in zip(blocks, pans, strict=True))
            )
            for out, pin, pan in zip(outs, pins, pans, strict=True):
                assert zpk_cipher.decrypt(out) == _iso0(pin, pan)
    finally:
        await server.close()


def _clear_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b & 0xFE).count("1") + 1) & 1 for b in key)


def _iso0(pin: str, pan: str) -> bytes:
    field = int(f"0{len(pin):X}{pin}".ljust(16, "F"), 16)
    return (field ^ int(account_number(pan), 16)).to_bytes(8, "big")


async def test_requests_of_one_loop_turn_leave_in_one_write() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    try:
        async with await HsmClient.connect("127.0.0.1", port) as c:
            conn = c._conns[0]
            assert conn is not None and conn.transport is not None
            writes: list[int] = []
            real_write = conn.transport.write

            def counting_write(data: bytes) -> None:
                writes.append(len(data))
                real_write(data)

            conn.transport.write = counting_write  # type: ignore[method-assign]
            results = await asyncio.gather(*(c.echo(b"%03d" % i) for i in range(100)))
            assert results == [b"%03d" % i for i in range(100)]
            assert len(writes) == 1 and writes[0] == 100 * (2 + 4 + 2 + 4 + 3)
    finally:
        await server.close()


async def test_timeout_keeps_order_for_later_requests() -> None:
    """A slow reply times out; its late answer is consumed, later requests get their own replies."""
    server, port, _ = await scripted(delay=0.8)
    try:
        async with await HsmClient.connect("127.0.0.1", port, timeout=0.3) as c:
            with pytest.raises(HsmTimeout):
                await c.request("SL", b"0001x")
            await asyncio.sleep(0.6)  # the late SL reply arrives (before or after the echo's) and is dropped
            assert await c.echo(b"after") == b"after"
    finally:
        server.close()


async def test_silent_peer_times_out_then_connection_is_replaced() -> None:
    server, port, peers = await scripted(silent=True)
    try:
        c = await HsmClient.connect("127.0.0.1", port, timeout=0.1)
        with pytest.raises(HsmTimeout) as ei:
            await c.echo(b"x")
        assert isinstance(ei.value, TimeoutError) and ei.value.command == "B2"
        for _ in range(500):  # the watchdog declares the connection hung (4 x timeout) and closes it
            if c._conns[0] is None:
                break
            await asyncio.sleep(0.01)
        assert c._conns[0] is None
        with pytest.raises(HsmTimeout):  # the next request opens a new connection (to a new silent peer)
            await c.echo(b"y")
        assert len(peers) == 2
        await c.close()
    finally:
        server.close()


async def test_out_of_sequence_reply_fails_fast() -> None:
    server, port, _ = await scripted(bad_header=True)
    try:
        async with await HsmClient.connect("127.0.0.1", port, timeout=1) as c:
            with pytest.raises(HsmUnavailable):
                await c.echo(b"x")
    finally:
        server.close()


async def test_connect_refused_and_reconnect_after_server_restart() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    c = await HsmClient.connect("127.0.0.1", port, timeout=1, reconnect_delay=0.3)
    assert await c.echo(b"1") == b"1" and c.is_up
    await server.close()
    await asyncio.sleep(0.05)
    assert not c.is_up
    with pytest.raises(HsmUnavailable, match="cannot connect"):
        await c.echo(b"2")
    server, _ = await start_hsm("127.0.0.1", port)
    try:
        with pytest.raises(HsmUnavailable, match="retrying shortly"):  # within the back-off: no new attempt
            await c.echo(b"3")
        assert len(server.connections) == 0
        await asyncio.sleep(0.35)
        assert await c.echo(b"4") == b"4" and c.is_up
    finally:
        await c.close()
        await server.close()
    with pytest.raises(HsmUnavailable):
        await HsmClient.connect("127.0.0.1", port, timeout=1)


async def test_in_flight_requests_fail_when_connection_drops() -> None:
    server, port, peers = await scripted(hold=10**6)  # never answers, holds everything
    try:
        c = await HsmClient.connect("127.0.0.1", port, timeout=5)
        tasks = [asyncio.ensure_future(c.echo(b"x")) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert peers[0].received == 5
        assert peers[0].transport is not None
        peers[0].transport.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, HsmUnavailable) for r in results)
        await c.close()
    finally:
        server.close()


async def test_pool_spreads_requests() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    try:
        async with await HsmClient.connect("127.0.0.1", port, pool_size=3) as c:
            assert await asyncio.gather(*(c.echo(b"%d" % i) for i in range(30))) == [b"%d" % i for i in range(30)]
            assert len(server.connections) == 3
    finally:
        await server.close()


async def test_error_reply_is_typed() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    try:
        async with await HsmClient.connect("127.0.0.1", port) as c:
            with pytest.raises(HsmError) as ei:
                await c.kcv("U" + "0" * 32, "ZPK")
            assert (ei.value.code, ei.value.command) == ("10", "BU")
            assert not isinstance(ei.value, HsmTimeout | HsmUnavailable)
            with pytest.raises(ValueError):
                await c.generate_mac("0" * 16, b"x", algorithm="nope")
    finally:
        await server.close()


async def test_many_clients_at_once_each_get_their_own_answers() -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    try:
        clients = [await HsmClient.connect("127.0.0.1", port) for _ in range(10)]
        payloads = [[b"c%02d-%03d" % (i, j) for j in range(100)] for i in range(10)]
        results = await asyncio.gather(
            *(asyncio.gather(*(c.echo(p) for p in ps)) for c, ps in zip(clients, payloads, strict=True))
        )
        assert [list(r) for r in results] == payloads
        assert len(server.connections) == 10
        for c in clients:
            await c.close()
    finally:
        await server.close()


_MIX_TPK = bytes.fromhex("3E8F5B7A9C1D2E4F6A7B8C9D0E1F2A3B")
_MIX_ZPK = bytes.fromhex("B0C1D2E3F405162738495A6B7C8D9EAF")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["echo", "ca", "ca-bad-pan", "kcv", "unknown", "mac"]), min_size=1, max_size=60))
def test_mixed_pipelined_requests_each_get_their_own_answer(kinds: list[str]) -> None:
    """Interleaved successes and error replies on one pipelined connection never desynchronise."""
    tpk_c, zpk_c = _clear_parity(_MIX_TPK), _clear_parity(_MIX_ZPK)
    tpk, zpk = encrypt_under_lmk(tpk_c, "TPK"), encrypt_under_lmk(zpk_c, "ZPK")
    tak = encrypt_under_lmk(bytes.fromhex("0723C80DB5F4CD3D"), "TAK")

    async def one(c: HsmClient, i: int, kind: str) -> tuple[str, object]:
        pan = f"62{i:014d}9"
        pin = f"{(i * 7919) % 10**6:06d}"
        block = DES3.new(tpk_c, DES3.MODE_ECB).encrypt(_iso0(pin, pan))
        try:
            if kind == "echo":
                return kind, await c.echo(b"%d" % i)
            if kind == "ca":
                out = await c.translate_pin_tpk_to_zpk(tpk, zpk, block, pan)
                return kind, DES3.new(zpk_c, DES3.MODE_ECB).decrypt(out) == _iso0(pin, pan)
            if kind == "ca-bad-pan":
                bad = pan[:-2] + str((int(pan[-2]) + 1) % 10) + pan[-1]  # last account digit -> fill != F
                return kind, await c.translate_pin_tpk_to_zpk(tpk, zpk, block, bad)
            if kind == "kcv":
                return kind, await c.kcv(zpk, "ZPK")
            if kind == "mac":
                return kind, await c.verify_mac(tak, b"%d" % i, await c.generate_mac(tak, b"%d" % i))
            return kind, await c.request(f"Q{i % 10}", b"")
        except HsmError as exc:
            return kind, exc.code

    async def run() -> None:
        server, port = await start_hsm("127.0.0.1", 0)
        try:
            async with await HsmClient.connect("127.0.0.1", port) as c:
                results = await asyncio.gather(*(one(c, i, k) for i, k in enumerate(kinds)))
        finally:
            await server.close()
        zkcv = DES3.new(zpk_c, DES3.MODE_ECB).encrypt(bytes(8))
        for i, (kind, got) in enumerate(results):
            want = {"echo": b"%d" % i, "ca": True, "ca-bad-pan": "20", "kcv": zkcv, "mac": True}.get(kind)
            if kind == "unknown":
                want = ("68", b"")
            assert got == want, (i, kind, got)

    asyncio.run(run())


async def test_a_lost_answer_costs_only_its_own_request() -> None:
    """The answer to DR never comes; the answer to the next request proves it lost."""
    server, port, peers = await scripted()
    try:
        async with await HsmClient.connect("127.0.0.1", port, timeout=5) as c:
            lost, ok = await asyncio.gather(c.request("DR", b"0001x"), c.echo(b"ok"), return_exceptions=True)
            assert isinstance(lost, HsmUnavailable) and lost.command == "DR" and "lost" in str(lost)
            assert ok == b"ok"
            assert await c.echo(b"again") == b"again" and len(peers) == 1  # same connection
    finally:
        server.close()


async def test_a_lost_answer_after_its_timeout_does_not_hit_the_next_request() -> None:
    server, port, peers = await scripted()
    try:
        async with await HsmClient.connect("127.0.0.1", port, timeout=0.2) as c:
            with pytest.raises(HsmTimeout):
                await c.request("DR", b"0001x")
            assert await c.echo(b"next") == b"next"
            assert await asyncio.gather(*(c.echo(b"%d" % i) for i in range(20))) == [b"%d" % i for i in range(20)]
            assert len(peers) == 1 and c.is_up
    finally:
        server.close()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_random_lost_answers_hit_only_their_own_requests(drops: list[bool]) -> None:
    """Any pattern of lost answers (the last request always answered): echoes succeed, lost ones fail."""

    async def run() -> None:
        server, port, peers = await scripted()
        try:
            async with await HsmClient.connect("127.0.0.1", port, timeout=5) as c:
                calls = [c.request("DR", b"0001x") if d else c.echo(b"%d" % i) for i, d in enumerate(drops)]
                calls.append(c.echo(b"last"))
                results = await asyncio.gather(*calls, return_exceptions=True)
                for i, d in enumerate(drops):
                    if d:
                        assert isinstance(results[i], HsmUnavailable), results[i]
                    else:
                        assert results[i] == b"%d" % i
                assert results[-1] == b"last" and len(peers) == 1
        finally:
            server.close()

    asyncio.run(run())
