"""The terminal listener: accepts POS connections, runs one task per request, drains on shutdown.

``SwitchServer`` owns the listening socket and the set of live connections.  Each complete frame
becomes one task that decodes it, runs the :class:`~switch.flows.dispatch.Processor` and writes
the reply with the TPDU addresses swapped and header digit 6 set.  A frame that cannot be
decoded is answered with 39 = 30 when its MTI is a request we know (so the terminal gets an
answer), otherwise the connection is closed with a log line naming the field and offset; other
connections never notice.  ``stop()`` stops accepting, lets in-flight transactions finish
(bounded by a drain timeout) and then closes every connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from _fastcore.fields import FieldFormatError, check_numeric_fields
from switch.flows import wire
from switch.flows.context import RC
from switch.flows.dispatch import Processor
from switch.logsafe import kv
from switch.protocol import Limits, TerminalProtocol

log = logging.getLogger("switch.server")

#: request MTIs a terminal may send; a malformed frame with one of these still gets a 30 reply
REQUEST_MTIS = frozenset({"0100", "0200", "0220", "0320", "0400", "0500", "0620", "0800", "0820"})


class SwitchServer:
    def __init__(self, processor: Processor, limits: Limits | None = None, metrics: Any = None) -> None:
        self.processor = processor
        self.limits = limits or Limits()
        processor.max_total_in_flight = self.limits.max_total_in_flight
        self.metrics = metrics
        self.connections: set[TerminalProtocol] = set()
        #: request tasks in flight -> their connection (no attribute set on each Task: that costs a dict)
        self.tasks: dict[asyncio.Task[None], TerminalProtocol] = {}
        if metrics is not None:  # read at scrape time: no gauge update per request
            metrics.in_flight.set_function(lambda: len(self.tasks))
        self.draining = False
        self.protocol_errors = 0
        self.requests = 0
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self.processor.services.loop = loop
        self._server = await loop.create_server(lambda: TerminalProtocol(self, self.limits), host, port,
                                                reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening", extra=kv(host=host, port=self.port))
        return self.port

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, drain in-flight transactions, close all connections."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        if self.tasks:
            log.info("draining", extra=kv(in_flight=len(self.tasks)))
        while self.tasks and loop.time() < deadline:
            await asyncio.wait(set(self.tasks), timeout=deadline - loop.time())
        for t in list(self.tasks):
            t.cancel()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        log.info("stopped", extra=kv(requests=self.requests, protocol_errors=self.protocol_errors))

    # ------------------------------------------------------------------ protocol callbacks
    def connection_opened(self, conn: TerminalProtocol) -> None:
        if self.draining:
            conn.close()
            return
        limit = self.limits.max_connections
        if limit and len(self.connections) >= limit:
            log.warning("connection refused: too many connections", extra=kv(peer=conn.peer, limit=limit))
            self.count_protocol_error("connections")
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.connections.add(conn)
        self._gauge()

    def connection_closed(self, conn: TerminalProtocol) -> None:
        self.connections.discard(conn)
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.connected_terminals.set(len(self.connections))
            except Exception:
                pass

    def count_protocol_error(self, reason: str = "framing") -> None:
        self.protocol_errors += 1
        if self.metrics is not None:
            try:
                self.metrics.rejected_frames.labels(reason).inc()
            except Exception:
                pass

    def dispatch(self, conn: TerminalProtocol, payload: bytes, offset: int) -> None:
        if self.draining:  # shutting down: no new transactions (the terminal times out and reverses)
            return
        try:
            frame = wire.Frame.parse(payload)
        except ValueError as exc:
            conn.protocol_error(str(exc), offset)
            return
        self.requests += 1
        conn.request_started()
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._handle(conn, frame, offset))
        self.tasks[task] = conn
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task).request_done()

    async def _handle(self, conn: TerminalProtocol, frame: wire.Frame, offset: int) -> None:
        try:
            req = wire.decode(frame.body)
        except wire.DECODE_ERRORS as exc:
            self._malformed(conn, frame, offset, exc)
            return
        try:  # BCD fields holding A-F nibbles decode fine: reject them here (30, field + offset)
            check_numeric_fields(req, encrypted_tracks=req.get("53", "")[2:3] == "1")
        except FieldFormatError as exc:
            exc.doc_dec = req  # type: ignore[attr-defined]  # echo 11/41/42 in the 30 reply
            self._malformed(conn, frame, offset, exc)
            return
        try:
            body, pr, ctx = await self.processor.process(req, frame.body)
        except Exception:
            log.exception("request failed", extra=kv(peer=conn.peer, mti=req.get("t"), stan=req.get("11")))
            try:
                body, pr, ctx = wire.encode(_error_reply(req, RC.SYSTEM_ERROR)), 0, None
            except Exception:
                conn.protocol_error("cannot build an error reply", offset)
                return
        if conn.closed:  # the terminal is gone: it will never see this reply
            if ctx is not None:
                await self.processor.undelivered(ctx)
            return
        conn.write(wire.reply_frame(frame.tpdu, frame.header, pr, body))

    def _malformed(self, conn: TerminalProtocol, frame: wire.Frame, offset: int, exc: BaseException) -> None:
        field = getattr(exc, "field", "?")
        pos = getattr(exc, "pos", None)
        if isinstance(exc, FieldFormatError):
            pos = None  # its offset counts digits inside the field
        body_off = offset + 2 + wire.PREFIX_LEN
        mti = frame.body[:2].hex()
        self.count_protocol_error("format")
        if mti in REQUEST_MTIS:
            log.warning("format error, answering 30", extra=kv(
                peer=conn.peer, mti=mti, field=field, offset=None if pos is None else body_off + pos,
                field_offset=getattr(exc, "offset", None) if pos is None else None,
                reason=getattr(exc, "msg", str(exc))))
            partial = getattr(exc, "doc_dec", {}) or {}
            reply = _error_reply({"t": mti, **{k: v for k, v in partial.items() if k in ("3", "11", "41", "42")}},
                                 RC.FORMAT_ERROR)
            try:
                body = wire.encode(reply)
            except Exception:
                body = wire.encode({"t": reply["t"], "39": RC.FORMAT_ERROR})
            conn.write(wire.frame_bytes(wire.swap_tpdu(frame.tpdu), wire.reply_header(frame.header), body))
        else:
            conn.protocol_error(f"undecodable message (MTI {mti}), field {field}: {exc}",
                                body_off + (pos or 0))


def _error_reply(req: dict[str, str], rc: str) -> dict[str, str]:
    reply = {"t": f"{int(req['t']) + 10:04d}"}
    for f in ("3", "11", "41", "42"):
        if f in req:
            reply[f] = req[f]
    reply["39"] = rc
    return reply
