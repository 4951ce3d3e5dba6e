"""One asyncio protocol object per terminal connection.

The protocol only feeds ``_fastcore.framing.FrameSplitter`` (compiled) and hands each frame to
the server; it never decodes or logs per message.  Per-connection limits: maximum frame length (a longer
length prefix closes the connection), requests in flight (reading pauses at the limit and
resumes when replies go out), an idle timeout and a frame timeout (a frame whose first byte
arrived must be complete in time: slow senders cannot hold a connection).  Replies are written as they complete;
replies completed in the same event-loop turn are coalesced into one ``transport.write``.  Frames beyond the
in-flight limit wait in a small backlog (reading is paused meanwhile), so a pipelining terminal
never has more than ``max_in_flight`` requests being processed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from _fastcore.errors import FramingError
from _fastcore.framing import FrameSplitter
from switch.logsafe import kv

if TYPE_CHECKING:
    from switch.server import SwitchServer

log = logging.getLogger("switch.protocol")

#: smallest legal frame after the length prefix: TPDU 5 + header 6 + MTI 2 + bitmap 8
MIN_FRAME = 21


@dataclass(slots=True)
class Limits:
    max_frame: int = 2048
    max_in_flight: int = 32
    idle_timeout: float = 300.0
    #: requests using the HSM or an issuer across all connections (0 = unlimited); beyond it: 96 at once
    max_total_in_flight: int = 0
    #: a frame whose first byte arrived must be complete within this many seconds (slow senders)
    frame_timeout: float = 30.0
    #: open terminal connections (0 = unlimited); beyond it a new connection is closed at once
    max_connections: int = 0


class TerminalProtocol(asyncio.Protocol):
    __slots__ = ("server", "limits", "transport", "peer", "in_flight", "closed",
                 "_splitter", "_paused", "_eof", "_backlog", "peak_in_flight", "_out",
                 "_flush_scheduled", "_frame_timer", "_idle", "_last_rx", "_loop")

    def __init__(self, server: SwitchServer, limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.peer: str = "?"
        self.in_flight = 0
        self.closed = False
        self._splitter = FrameSplitter(limits.max_frame, MIN_FRAME)
        self._paused = False
        self._eof = False
        self._backlog: collections.deque[tuple[bytes, int]] = collections.deque()
        self.peak_in_flight = 0
        self._out: list[bytes] = []
        self._frame_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._idle: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._last_rx = self._loop.time()
        self._idle = self._loop.call_later(self.limits.idle_timeout, self._check_idle)
        self.server.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        splitter = self._splitter
        try:
            frames = splitter.feed(data)
        except FramingError as exc:
            for frame in getattr(exc, "frames", ()):
                self.server.dispatch(self, frame, -1)
            self.protocol_error(str(exc), exc.offset or 0)
            return
        # a frame left incomplete must be completed within frame_timeout (slowloris senders)
        if splitter.buffered:
            if self._frame_timer is None:
                self._frame_timer = self._loop.call_later(self.limits.frame_timeout, self._frame_expired)
        elif self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if not frames:
            return
        offset = splitter.offset - sum(len(f) + 2 for f in frames)  # stream offset of the first one
        backlog = self._backlog
        for frame in frames:
            backlog.append((frame, offset))
            offset += len(frame) + 2
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Dispatch queued frames while under the in-flight limit; pause reading while frames wait."""
        backlog = self._backlog
        limit = self.limits.max_in_flight
        while backlog and self.in_flight < limit and not self.closed:
            frame, offset = backlog.popleft()
            self.server.dispatch(self, frame, offset)
        transport = self.transport
        if transport is None or self.closed:
            return
        if backlog or self.in_flight >= limit:
            if not self._paused:
                self._paused = True
                transport.pause_reading()
        elif self._paused:
            self._paused = False
            transport.resume_reading()

    def eof_received(self) -> bool:
        # A terminal that closes its side is gone: replies it would get are not written, and the
        # server reverses approvals that could not be delivered (see SwitchServer._handle).
        self._eof = True
        self.closed = True
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        if self._frame_timer is not None:
            self._frame_timer.cancel()
        self.server.connection_closed(self)

    # ------------------------------------------------------------------ called by the server
    def request_started(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def request_done(self) -> None:
        self.in_flight -= 1
        if self._backlog or self._paused:
            self._drain_backlog()
        if self.in_flight == 0 and not self._backlog and (self.server.draining or self._eof):
            self.close()

    def write(self, data: bytes) -> None:
        """Queue a reply; replies completed in the same loop turn leave in one ``transport.write``."""
        if self.closed:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if not self.closed and transport is not None and not transport.is_closing():
            transport.write(data)

    def protocol_error(self, reason: str, offset: int) -> None:
        """Unrecoverable stream error: log it with the offset and drop this connection only."""
        log.warning("closing connection: bad frame", extra=kv(peer=self.peer, reason=reason, offset=offset))
        self.server.count_protocol_error()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._flush()  # queued replies go out before the FIN
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _frame_expired(self) -> None:
        self._frame_timer = None
        if self.closed or not self._splitter.buffered:
            return
        log.warning("closing connection: frame not completed in time", extra=kv(
            peer=self.peer, buffered=self._splitter.buffered, timeout_s=self.limits.frame_timeout))
        self.server.count_protocol_error("slow")
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _check_idle(self) -> None:
        if self.closed:
            return
        idle_for = self._loop.time() - self._last_rx
        timeout = self.limits.idle_timeout
        if idle_for >= timeout and self.in_flight == 0:
            log.info("closing idle connection", extra=kv(peer=self.peer, idle_s=round(idle_for, 1)))
            self.close()
            return
        self._idle = self._loop.call_later(max(timeout - idle_for, 0.05) if idle_for < timeout else timeout,
                                           self._check_idle)
