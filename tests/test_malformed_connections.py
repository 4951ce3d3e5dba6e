"""A flood of connections beyond ``Limits.max_connections`` is refused at accept; terminals already
connected keep transacting, and a freed slot is usable again (in-process switch, switch.testbed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from switch.protocol import Limits
from switch.testbed import Stack

pytestmark = pytest.mark.timeout(60)
MAX_CONNECTIONS = 5
FLOOD = 12


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed_by_switch = asyncio.ensure_future(self._watch())

    async def _watch(self) -> bool:
        try:
            return not await self.reader.read(100)
        except OSError:
            return True

    async def close(self) -> None:
        self.closed_by_switch.cancel()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def test_connections_beyond_the_bound_are_refused_and_slots_come_back(tmp_path):
    stack = await Stack.start(tmp_path, terminals=2,
                              limits=Limits(max_in_flight=32, max_connections=MAX_CONNECTIONS))
    conns: list[Conn] = []
    try:
        term = await stack.connected_terminal(0)  # one slot taken by a real terminal
        card = stack.card("cup", 0)
        for _ in range(FLOOD):
            conns.append(Conn(*await asyncio.open_connection("127.0.0.1", stack.port)))
        refused = FLOOD - (MAX_CONNECTIONS - 1)
        loop = asyncio.get_running_loop()
        end = loop.time() + 10.0
        while sum(c.closed_by_switch.done() for c in conns) < refused and loop.time() < end:
            await asyncio.sleep(0.02)
        assert sum(c.closed_by_switch.done() for c in conns) == refused
        # the terminal already connected is served; a round trip later, the accepted ones are still open
        reply = await term.sale(card, 321, pin=card.pin)
        assert reply.approved and reply.mac_ok
        await asyncio.sleep(0)
        assert sum(c.closed_by_switch.done() for c in conns) == refused
        # free the slots: a second terminal can connect and transact
        for c in conns:
            await c.close()
        conns.clear()
        for _ in range(100):  # the switch sees the closes asynchronously
            try:
                term2 = await stack.connected_terminal(1)
                break
            except Exception:  # refused (connection reset during sign-on): not yet freed
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("no slot came back")
        reply2 = await term2.sale(card, 654, pin=card.pin)
        assert reply2.approved
    finally:
        for c in conns:
            await c.close()
        await stack.stop()
