"""TCP front end of the issuer simulator: H2H frames in, answers out (possibly late, or never).

The protocol only feeds a :class:`switch.h2h.FrameReader`; each decoded request becomes a task
(so a delayed answer does not hold up the others) whose answer is written with the next coalesced
``transport.write``. An undecodable message is logged (field and offset) and answered ``30`` when
its MTI and matching fields can be read; a broken length prefix closes only that connection.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from switch import h2h
from switch.logsafe import kv

from .accounts import IssuerConfig, load
from .faults import Faults
from .host import IssuerHost, IssuerHsm, Outcome
from .ledger import Ledger

__all__ = ["IssuerServer", "H2HHandler", "start_issuer"]

log = logging.getLogger("posswitch.issuer")


class H2HHandler(Protocol):
    """What the server drives: :class:`~issuer_sim.host.IssuerHost` or :class:`~issuer_sim.wallets.WalletHost`."""

    config: Any
    ledger: Ledger
    faults: Faults

    async def handle(self, msg: dict[str, str]) -> Outcome: ...


class _H2HServerProtocol(asyncio.Protocol):
    def __init__(self, server: IssuerServer) -> None:
        self.server = server
        self.reader = h2h.FrameReader()
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server._conns.add(self)
        log.info("h2h_connected", extra=kv(peer=self.peer))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        self.transport = None
        log.info("h2h_disconnected", extra=kv(peer=self.peer, error=str(exc) if exc else None))

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self.reader.feed(data)
        except h2h.H2HError as exc:
            log.warning("h2h_bad_frame", extra=kv(peer=self.peer, error=str(exc)))
            if self.transport is not None:
                self.transport.close()
            return
        for body in bodies:
            self.server._spawn(self._serve(body))

    async def _serve(self, body: bytes) -> None:
        try:
            msg = h2h.decode(body)
        except h2h.H2HError as exc:
            log.warning("h2h_bad_message", extra=kv(peer=self.peer, error=str(exc)))
            self._answer_format_error(body)
            return
        if h2h.is_response(msg):
            log.info("h2h_unexpected_response", extra=kv(mti=msg.get("t"), stan=msg.get("11")))
            return
        try:
            outcome = await self.server.host.handle(msg)
        except Exception:  # a bug or a ledger failure must not leave the switch waiting
            log.exception("issuer_failed", extra=kv(mti=msg.get("t"), stan=msg.get("11")))
            self.send(h2h.response_to(msg, "96"))
            return
        if outcome.response is None:
            return
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        self.send(outcome.response)

    def _answer_format_error(self, body: bytes) -> None:
        # best effort: the MTI is the first 4 ASCII bytes; without 11/41/37 the switch cannot match
        # the answer, so only answer when they decode partially.
        mti = body[:4].decode("ascii", "replace")
        if not (mti.isdigit() and int(mti[2]) % 2 == 0):
            return
        self.send({"t": h2h.response_mti(mti), "39": "30"})

    def send(self, msg: dict[str, str]) -> None:
        try:
            wire = h2h.frame(msg)
        except h2h.H2HError as exc:
            log.error("h2h_encode_failed", extra=kv(error=str(exc), mti=msg.get("t")))
            return
        if self.transport is None or self.transport.is_closing():
            log.info("h2h_answer_lost", extra=kv(mti=msg.get("t"), stan=msg.get("11")))
            return
        self._out.append(wire)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()


class IssuerServer:
    """A running issuer: ``host`` (logic), ``ledger``, ``faults``, ``port``; ``await close()``."""

    def __init__(self, host: H2HHandler) -> None:
        self.host = host
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_H2HServerProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    @property
    def ledger(self) -> Ledger:
        return self.host.ledger

    @property
    def faults(self) -> Faults:
        return self.host.faults

    @property
    def port(self) -> int:
        return self.address[1]

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("issuer_task_failed", exc_info=task.exception())

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> IssuerServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2HServerProtocol(self), host, port)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        accounts = getattr(self.host.config, "accounts", None) or getattr(self.host.config, "users", [])
        log.info("issuer_listening", extra=kv(host=sock[0], port=sock[1], accounts=len(accounts),
                                              kind=type(self.host).__name__))
        return self

    async def close(self, *, close_ledger: bool = False) -> None:
        """Stop listening, drop every connection and pending answer (like a crash, minus the ledger)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        host_close = getattr(self.host, "close", None)
        if host_close is not None:
            host_close()
        if close_ledger:
            self.host.ledger.close()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()


async def start_issuer(
    config: IssuerConfig | str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    hsm: IssuerHsm | None = None,
    ledger: Ledger | str | Path = ":memory:",
) -> IssuerServer:
    """Start an issuer in this event loop (tests, demo). ``port=0`` picks a free port."""
    cfg = config if isinstance(config, IssuerConfig) else load(config)
    led = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
    return await IssuerServer(IssuerHost(cfg, led, hsm)).listen(host, port)
