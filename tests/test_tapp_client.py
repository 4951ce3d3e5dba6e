"""PosClient: connect retries, read timeout, peer close, bad frames, split frames; reply checks; MAC vectors."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from _fastcore import framing
from terminal_bridge.client import (
    NetworkError,
    PosClient,
    ReplyError,
    check_reply,
    compute_mac,
    decode,
    encode,
    encode_maced,
    mac_ok,
)

pytestmark = pytest.mark.timeout(30)
VECTORS = Path(__file__).parent / "vectors"
SIGNON = {"t": "0800", "11": "000001", "41": "TERM0001", "42": "898310048990001", "60": "00000001003", "63": "01 "}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_connect_refused_is_retried_then_reported_unsent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "terminal_bridge.client")
    client = PosClient("127.0.0.1", free_port(), connect_retries=2, retry_delay=0.01, connect_timeout=1.0)
    with pytest.raises(NetworkError) as ei:
        await client.exchange(encode(SIGNON))
    assert ei.value.kind == "connect" and ei.value.sent is False and "cannot connect" in str(ei.value)
    assert sum(r.getMessage() == "connect failed" for r in caplog.records) == 3  # 1 try + 2 retries


async def test_silent_switch_times_out_after_sending() -> None:
    got = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        got.set()
        await r.read()  # never answers
        w.close()

    server, port = await serve(handler)
    async with server:
        client = PosClient("127.0.0.1", port, read_timeout=0.3)
        with pytest.raises(NetworkError) as ei:
            await client.exchange(encode(SIGNON))
        assert ei.value.kind == "timeout" and ei.value.sent is True and got.is_set()


async def test_peer_close_and_bad_frames() -> None:
    async def closer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.close()

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.write(b"\x00\x00")  # zero-length frame
        await w.drain()
        await r.read()

    async def not_8583(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.write(framing.build_frame(b"\x08\x10\xff", bytes.fromhex("6000000003"), bytes(6)))  # bitmap cut short
        await w.drain()
        await r.read()

    for handler, kind in ((closer, "closed"), (garbage, "framing"), (not_8583, "framing")):
        server, port = await serve(handler)
        async with server:
            with pytest.raises(NetworkError) as ei:
                await PosClient("127.0.0.1", port, read_timeout=2.0).exchange(encode(SIGNON))
            assert ei.value.kind == kind and ei.value.sent is True


async def test_reply_in_one_byte_pieces_is_reassembled_and_digit6_read() -> None:
    reply = {**SIGNON, "t": "0810", "39": "00"}
    header = framing.set_request_digit(bytes.fromhex("603100311001"), "3")

    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        for b in framing.build_frame(encode(reply), bytes.fromhex("6000000003"), header):
            w.write(bytes([b]))
            await w.drain()
        await r.read()

    server, port = await serve(trickle)
    async with server:
        rep = await PosClient("127.0.0.1", port).exchange(encode(SIGNON))
    assert rep.doc["39"] == "00" and rep.processing_request == "3"
    check_reply(SIGNON, rep)
    rep.doc["11"] = "000002"
    with pytest.raises(ReplyError, match="field 11"):
        check_reply(SIGNON, rep)
    rep.doc["t"] = "0830"
    with pytest.raises(ReplyError, match="MTI 0830 is not 0810"):
        check_reply(SIGNON, rep)


def test_mac1_vector_and_round_trip() -> None:
    frame = bytes.fromhex("".join(VECTORS.joinpath("mac1_frame.hex").read_text().split()))
    body = frame[13:]
    tak = bytes.fromhex("0723C80DB5F4CD3D")
    assert compute_mac(tak, "pos-ecb", body[:-8]) == b"B3A092AE"  # dialect MAC-1
    assert mac_ok(body, tak, "pos-ecb") and not mac_ok(body, tak, "x9.9")
    assert compute_mac(tak, "x9.9", body[:-8])[:4].hex().upper() == "D3CED761"  # negative: X9.9 differs
    doc = decode(body)
    again = encode_maced({k: v for k, v in doc.items() if k not in ("p", "64")}, tak, "pos-ecb")
    assert again == body
    with pytest.raises(ValueError, match="unknown MAC algorithm"):
        compute_mac(tak, "cmac", b"")
