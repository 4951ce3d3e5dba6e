"""The terminal listener under stress and abuse: malformed and oversize frames, pipelining,
in-flight limits, split frames, idle timeout and graceful shutdown (real TCP on loopback)."""

from __future__ import annotations

import asyncio

import pytest

from switch.flows import wire
from switch.protocol import Limits
from switch.sim_terminal import DEFAULT_HEADER, DEFAULT_TPDU
from switch.testbed import Stack


@pytest.fixture
async def stack(tmp_path):
    s = await Stack.start(tmp_path, terminals=2, limits=Limits(max_frame=1024, max_in_flight=4, idle_timeout=30))
    try:
        yield s
    finally:
        await s.stop()


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(100), 5.0)
    except ConnectionError:
        return True
    return data == b""


async def test_malformed_field_gets_30_and_connection_survives(stack):
    term = await stack.connected_terminal(0)
    other = await stack.connected_terminal(1)
    # MTI 0200, bitmap with field 2, LL = 0x99 digits (> 19 allowed)
    bad = bytes.fromhex("0200" + "4000000000000000" + "99" + "12" * 10)
    reply = await term.send({"t": "0200"}, raw_body=bad)
    assert reply.rc == "30"
    assert stack.server.protocol_errors == 1
    card = stack.card()
    assert (await term.sale(card, 100, entry="contactless")).rc == "00"
    assert (await other.sale(card, 100, entry="contactless")).rc == "00"


async def test_undecodable_unknown_mti_closes_only_that_connection(stack):
    other = await stack.connected_terminal(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    body = bytes.fromhex("9999" + "FFFFFFFFFFFFFFFF" + "00" * 4)
    writer.write(wire.frame_bytes(DEFAULT_TPDU, DEFAULT_HEADER, body))
    assert await _closed_by_peer(reader)
    writer.close()
    assert (await other.sale(stack.card(), 100, entry="contactless")).rc == "00"


@pytest.mark.parametrize("length", [0, 5, 60000])
async def test_bad_length_prefix_closes_connection(stack, length):
    other = await stack.connected_terminal(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(length.to_bytes(2, "big") + b"\x60" * 30)
    assert await _closed_by_peer(reader)
    writer.close()
    assert (await other.echo()).rc == "00"


async def test_bad_tpdu_closes_connection(stack):
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    body = bytes.fromhex("0820" + "0020000000800010") + b"\x00" * 30
    writer.write(wire.frame_bytes(b"\x61\x00\x03\x00\x00", DEFAULT_HEADER, body))
    assert await _closed_by_peer(reader)
    writer.close()


async def test_reply_swaps_tpdu_and_echoes_header(stack):
    term = await stack.connected_terminal(0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    doc = term._base("0820", None, "00", "301")
    writer.write(wire.frame_bytes(bytes.fromhex("6005250000"), bytes.fromhex("603100311001"), wire.encode(doc)))
    n = int.from_bytes(await reader.readexactly(2), "big")
    payload = await reader.readexactly(n)
    frame = wire.Frame.parse(payload)
    assert frame.tpdu == bytes.fromhex("6000000525")
    assert frame.header == bytes.fromhex("603100311001")
    assert wire.decode(frame.body)["39"] == "00"
    writer.close()


async def test_frame_split_byte_by_byte(stack):
    term = await stack.connected_terminal(0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    doc = term._base("0820", None, "00", "301")
    data = wire.frame_bytes(DEFAULT_TPDU, DEFAULT_HEADER, wire.encode(doc))
    for b in data:
        writer.write(bytes([b]))
        await writer.drain()
    n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    assert wire.decode(wire.Frame.parse(await reader.readexactly(n)).body)["39"] == "00"
    writer.close()


async def test_pipelined_requests_beyond_in_flight_limit(stack):
    term = await stack.connected_terminal(0)
    cards = [stack.card("cup", n) for n in range(4)]
    replies = await asyncio.gather(*(term.sale(cards[i % 4], 100 + i, entry="contactless") for i in range(40)))
    assert [r.rc for r in replies] == ["00"] * 40
    assert len({r.rrn for r in replies}) == 40
    assert all(r.mac_ok for r in replies)
    conn = next(iter(stack.server.connections))
    assert 1 < conn.peak_in_flight <= 4  # the limit held although 40 requests were pipelined


async def test_many_terminals_at_once(tmp_path):
    s = await Stack.start(tmp_path, terminals=12)
    try:
        terms = [await s.connected_terminal(i) for i in range(12)]
        replies = await asyncio.gather(*(t.sale(s.card("cup", i % 4), 200, entry="chip") for i, t in enumerate(terms)))
        assert all(r.rc == "00" and r.mac_ok for r in replies)
        assert len(s.server.connections) == 12
    finally:
        await s.stop()


async def test_graceful_shutdown_drains_in_flight(stack):
    term = await stack.connected_terminal(0)
    stack.issuers["cup"].faults.add(action="delay", delay=0.4, amount=5555)
    card = stack.card("cup", 1)
    sale = asyncio.create_task(term.sale(card, 5555, entry="contactless"))
    for _ in range(250):  # wait until the switch holds the request (the issuer answers 0.4 s later)
        if stack.server.tasks:
            break
        await asyncio.sleep(0.01)
    assert stack.server.tasks
    await stack.server.stop(drain_timeout=5.0)
    reply = await sale
    assert reply.rc == "00"
    row = await stack.journal.find_by_rrn("SIM00000", "898310048990001", reply.rrn)
    assert row.state == "approved"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", stack.port)


async def test_idle_connection_is_closed(tmp_path):
    s = await Stack.start(tmp_path, terminals=1, issuers=False, limits=Limits(idle_timeout=0.2))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await _closed_by_peer(reader)
        writer.close()
    finally:
        await s.stop()


async def test_hex_nibbles_in_amount_get_30_with_echoed_keys(stack):
    term = await stack.connected_terminal(0)
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "0000000001AB", "25": "00", "49": "156", "2": stack.card().pan, "22": "072"})
    reply = await term.send(doc, mac=True)
    assert reply.rc == "30"
    assert reply.doc["11"] == doc["11"] and reply.doc["41"] == doc["41"]


async def test_mutated_frames_never_break_the_switch(stack):
    """300 frames mutated from a valid MACed sale (bit flips, truncation, garbage tails), each on its
    own connection: every one gets a reply or a closed connection, and a good terminal keeps working."""
    import random

    rng = random.Random(1234)
    good = await stack.connected_terminal(1)
    term = await stack.connected_terminal(0)
    card = stack.card()
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000000100", "25": "00", "49": "156", "35": card.track2, "22": "022"})
    body = bytearray(term.encode(doc, mac=True))
    answered = closed = 0
    for _ in range(300):
        b = bytearray(body)
        kind = rng.random()
        if kind < 0.5:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind < 0.8:
            b = b[: rng.randrange(2, len(b))]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        writer.write(wire.frame_bytes(DEFAULT_TPDU, DEFAULT_HEADER, bytes(b)))
        try:
            head = await asyncio.wait_for(reader.readexactly(2), 5.0)
            payload = await reader.readexactly(int.from_bytes(head, "big"))
            wire.decode(wire.Frame.parse(payload).body)  # every reply is itself well-formed
            answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            closed += 1
        writer.close()
    assert answered + closed == 300 and answered > 100
    assert (await good.sale(card, 100, entry="contactless")).rc == "00"


async def test_global_in_flight_bound_answers_96_at_once(tmp_path):
    s = await Stack.start(tmp_path, terminals=3, limits=Limits(max_total_in_flight=2))
    try:
        terms = [await s.connected_terminal(i) for i in range(3)]
        card = s.card("cup", 1)
        before = s.issuers["cup"].ledger.balance(card.pan)
        s.issuers["cup"].faults.add(action="delay", delay=0.4, amount=4040)
        replies = await asyncio.gather(*(t.sale(card, 4040, entry="contactless") for t in terms for _ in range(2)))
        codes = sorted(r.rc for r in replies)
        assert codes.count("00") >= 2 and "96" in codes, codes
        assert s.server.processor.overloaded == codes.count("96")
        # the refused ones never reached the issuer
        assert s.issuers["cup"].ledger.balance(card.pan) == before - 4040 * codes.count("00")
        assert (await terms[0].echo()).rc == "00"  # management traffic is not bounded
    finally:
        await s.stop()


async def test_slow_sender_is_cut_and_connection_count_bounded(tmp_path):
    s = await Stack.start(tmp_path, terminals=1, issuers=False, limits=Limits(frame_timeout=0.3, max_connections=2))
    try:
        # slowloris: a frame that never completes is cut after frame_timeout although bytes keep coming
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"\x00\x40\x60")
        closed = False
        for _ in range(40):
            await asyncio.sleep(0.05)
            try:
                writer.write(b"\x00")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
        assert closed or await _closed_by_peer(reader)
        writer.close()
        # at most 2 connections: the third is closed at once
        conns = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        r3, w3 = await asyncio.open_connection("127.0.0.1", s.port)
        assert await _closed_by_peer(r3)
        for _, w in conns:
            w.close()
        w3.close()
    finally:
        await s.stop()
