"""Slowloris: a connection that trickles a frame and never completes it must not hold a descriptor for ever.

Every byte refreshes the idle timer, so only a per-frame deadline (``Limits.frame_timeout``: a
frame whose first byte arrived must be complete within it) can close such a connection.  The
switch runs in-process (switch.testbed); a signed-on terminal keeps transacting meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from switch.protocol import Limits
from switch.testbed import Stack

pytestmark = pytest.mark.timeout(60)


async def _trickle_until_closed(port: int, frame: bytes, gap: float, give_up: float) -> bool:
    """Send ``frame`` minus its last byte, one byte per ``gap``; True if the switch closed on us."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    end = loop.time() + give_up
    closed = False
    try:
        i = 0
        while loop.time() < end:
            if i < len(frame) - 1:
                writer.write(frame[i:i + 1])
                i += 1
            try:
                data = await asyncio.wait_for(reader.read(100), gap)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return closed


async def test_slowloris_connection_is_closed_by_the_frame_deadline(tmp_path):
    limits = Limits(max_frame=2048, max_in_flight=32, idle_timeout=300.0,
                    frame_timeout=0.5)  # type: ignore[call-arg]
    stack = await Stack.start(tmp_path, terminals=1, limits=limits)
    try:
        term = await stack.connected_terminal(0)
        card = stack.card("cup", 0)
        frame = (200).to_bytes(2, "big") + bytes(range(56, 255))  # promises 200 bytes, gets 199
        slow = asyncio.ensure_future(_trickle_until_closed(stack.port, frame, 0.05, 20.0))
        replies = []
        while not slow.done():
            replies.append(await term.sale(card, 100 + len(replies), pin=card.pin))
            await asyncio.sleep(0.05)
        assert await slow, "the slow connection was never closed"
        assert replies and all(r.approved for r in replies)  # everyone else kept being served
    finally:
        await stack.stop()
