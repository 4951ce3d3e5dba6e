"""TCP front end of the HSM simulator: 2-byte big-endian length + header + command.

The protocol object only feeds ``_fastcore.framing.FrameSplitter`` and hands each frame to
:meth:`hsm_sim.commands.Hsm.handle`; replies to everything that arrived in one read are
written back in order with a single ``transport.write``.  A frame that cannot be parsed
gets an error reply; the connection and the other clients keep being served.  A zero
length prefix loses the frame boundary: the frames before it are answered, then that
connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from _fastcore.errors import FramingError
from _fastcore.framing import FrameSplitter
from switch.logsafe import kv

from .commands import Hsm
from .keystore import KeyStore
from .lmk import DEFAULT_LMK, Lmk

log = logging.getLogger("posswitch.hsm_sim")

class HsmProtocol(asyncio.Protocol):
    """One client connection: length-prefixed frames in, replies out in the same order."""

    def __init__(self, hsm: Hsm, server: HsmServer | None = None) -> None:
        self.hsm = hsm
        self.server = server
        self.splitter = FrameSplitter(max_frame=0xFFFF)
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        if self.server is not None:
            self.server.connections.add(self)
        log.info("hsm client connected", extra=kv(peer=str(self.peer)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None:
            self.server.connections.discard(self)
        log.info("hsm client disconnected", extra=kv(peer=str(self.peer), reason=str(exc) if exc else "eof"))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.splitter.feed(data)
        except FramingError as exc:  # a zero length: the stream cannot be resynchronised
            frames = getattr(exc, "frames", [])
            log.warning("hsm bad frame, closing", extra=kv(peer=str(self.peer), reason=str(exc)))
            self._answer(frames)
            if self.transport is not None:
                self.transport.close()
            return
        if len(frames) == 1 and self.transport is not None:  # the common case off peak: one request
            reply = self.hsm.handle(frames[0])
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
        elif frames:
            self._answer(frames)

    def _answer(self, frames: list[bytes]) -> None:
        """Answer every frame of one read with a single ``transport.write``."""
        handle = self.hsm.handle
        out = []
        for frame in frames:
            reply = handle(frame)
            out.append(len(reply).to_bytes(2, "big") + reply)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class HsmServer:
    """In-process HSM simulator: ``await HsmServer(...).start()`` then ``.port``; ``await close()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        header_len: int = 4,
        keys: str | os.PathLike[str] | KeyStore | None = None,
        lmk: Lmk | None = None,
    ) -> None:
        self.host = host
        self.port = port
        lmk = lmk or DEFAULT_LMK
        keystore = keys if isinstance(keys, KeyStore) else KeyStore(keys, lmk_check=lmk.check_value())
        self.hsm = Hsm(lmk, keystore, header_len=header_len)
        self.connections: set[HsmProtocol] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> HsmServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HsmProtocol(self.hsm, self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "hsm listening",
            extra=kv(
                host=self.host,
                port=self.port,
                header_len=self.hsm.header_len,
                lmk_check=self.hsm.lmk.check_value(),
                stored_keys=len(self.hsm.keystore),
            ),
        )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> HsmServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_hsm(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    header_len: int = 4,
    keys: str | os.PathLike[str] | KeyStore | None = None,
    lmk: Lmk | None = None,
) -> tuple[HsmServer, int]:
    """Start a simulator on the running loop; returns ``(server, port)`` (close with ``await server.close()``)."""
    server = await HsmServer(host, port, header_len=header_len, keys=keys, lmk=lmk).start()
    return server, server.port
