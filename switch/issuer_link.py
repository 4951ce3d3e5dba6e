"""The switch's outbound connection to one issuer (or QR wallet) host.

:class:`IssuerLink` keeps one persistent H2H connection (``switch.h2h``) per issuer:

* connect, and reconnect with exponential backoff (+ jitter) whenever the connection drops;
* allocate the upstream STAN (field 11, per link) and field 7, match answers on
  (11, 41, 37) with a per-request timeout; late answers are logged and dropped. Timeouts cost no
  timer per request: each pending request has a deadline, queued per timeout value (so each queue
  is in deadline order), and one watchdog timer expires the due ones (at most ``_TICK`` late);
* coalesce writes: every message queued during one event-loop turn leaves in one ``transport.write``;
* send a 0800 echo when the link has been idle for ``echo_interval``; no answer closes and reconnects;
* reversals: a reversible request that times out (or whose connection drops before the answer)
  raises :class:`IssuerTimeout` and queues a 0420 that a background task re-sends (as 0421) until a
  0430 arrives (any response code acknowledges; ``00``/``12``/``25`` mean "done"); :meth:`IssuerLink.advise`
  store-and-forwards 0220 advices the same way (repeats as 0221).

The reversal queue sits behind :class:`ReversalStore` (in memory now: :class:`MemoryReversalStore`;
a persistent store in the journal database can replace it). Metrics go to an optional object with
any of ``link_state(link, up)``, ``upstream_latency(link, mti, seconds, code)``,
``pending_reversals(link, n)``, ``timeout(link)``, ``late_response(link)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from switch import h2h
from switch.logsafe import kv

__all__ = [
    "IssuerLink", "IssuerLinkError", "IssuerTimeout", "IssuerUnavailable",
    "ReversalStore", "MemoryReversalStore", "LinkState", "SwitchMetricsHooks",
]

log = logging.getLogger("posswitch.issuer_link")


#: 0420s sent at once by the reversal task
REVERSAL_BATCH = 32

#: the deadline watchdog runs at most once per this many seconds (a timeout fires up to this late)
_TICK = 0.01

_MISSING: Any = object()


class IssuerLinkError(Exception):
    """Base class of link failures."""


class IssuerTimeout(IssuerLinkError, TimeoutError):
    """No answer in time (or the connection dropped with the request in flight): outcome unknown.
    The terminal gets 98; a reversal was queued when the request was reversible."""


class IssuerUnavailable(IssuerLinkError, ConnectionError):
    """The link is down: the request was not sent (terminal gets 91)."""


class LinkState:
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"
    CLOSED = "closed"


class ReversalStore(Protocol):
    """Where pending reversals wait until the issuer acknowledges them (one store may serve many links)."""

    async def add(self, link: str, msg: dict[str, str]) -> int: ...

    async def pending(self, link: str) -> list[tuple[int, dict[str, str]]]: ...

    async def ack(self, item_id: int, response_code: str) -> None: ...

    async def count(self, link: str) -> int: ...

    async def oldest(self, link: str) -> float | None:
        """When the oldest unacknowledged item of ``link`` was queued (Unix time), None if none."""
        ...


class MemoryReversalStore:
    """In-memory :class:`ReversalStore` (lost on restart; the journal-backed store is not)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._items: dict[int, tuple[str, dict[str, str]]] = {}
        self._queued_at: dict[int, float] = {}
        self.acked: list[tuple[int, str, dict[str, str]]] = []

    async def add(self, link: str, msg: dict[str, str]) -> int:
        item = next(self._ids)
        self._items[item] = (link, {k: v for k, v in msg.items() if k not in h2h.SENSITIVE_FIELDS})
        self._queued_at[item] = time.time()
        return item

    async def pending(self, link: str) -> list[tuple[int, dict[str, str]]]:
        return [(i, dict(m)) for i, (lk, m) in self._items.items() if lk == link]

    async def ack(self, item_id: int, response_code: str) -> None:
        entry = self._items.pop(item_id, None)
        self._queued_at.pop(item_id, None)
        if entry is not None:
            self.acked.append((item_id, response_code, entry[1]))

    async def count(self, link: str) -> int:
        return sum(1 for lk, _ in self._items.values() if lk == link)

    async def oldest(self, link: str) -> float | None:
        return min((self._queued_at[i] for i, (lk, _) in self._items.items() if lk == link), default=None)


class _Lost(Exception):
    """The connection dropped (or was down) before the answer came."""


class _NotSent(_Lost):
    """The connection was already gone: the message never left."""


class _LinkProtocol(asyncio.Protocol):
    """Feeds the frame reader and hands decoded messages to the link; coalesces writes."""

    def __init__(self, link: IssuerLink) -> None:
        self.link = link
        self.reader = h2h.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.link._last_rx = self.link._loop.time()
        try:
            bodies = self.reader.feed(data)
        except h2h.H2HError as exc:
            log.warning("issuer_bad_frame", extra=kv(link=self.link.name, error=str(exc)))
            self.abort()
            return
        for body in bodies:
            try:
                msg = h2h.decode(body)
            except h2h.H2HError as exc:
                log.warning("issuer_bad_message", extra=kv(link=self.link.name, error=str(exc)))
                continue
            self.link._on_message(msg)

    def send(self, wire: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise _Lost()
        if not self.link.coalesce:  # one write per message (benchmark baseline)
            self.transport.write(wire)
            self.link._last_tx = self.link._loop.time()
            return
        self._out.append(wire)
        if self._flush_handle is None:
            self._flush_handle = self.link._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
            self.link._last_tx = self.link._loop.time()
        self._out.clear()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _noop(*_: Any) -> None:
    return None


class SwitchMetricsHooks:
    """Adapts ``switch.metrics.SwitchMetrics`` (its ``issuer_link_up``, ``issuer_latency`` and
    ``pending_reversals`` instruments) to the link's hook names. ``IssuerLink`` wraps a
    ``SwitchMetrics`` in this automatically; one instance may serve several links."""

    def __init__(self, metrics: Any) -> None:
        self.m = metrics

    def link_state(self, link: str, up: bool) -> None:
        self.m.issuer_link_up.labels(link).set(1 if up else 0)

    def upstream_latency(self, link: str, mti: str, seconds: float, code: str) -> None:
        self.m.issuer_latency.labels(link).observe(seconds)

    def pending_reversals(self, link: str, n: int) -> None:
        self.m.set_pending_reversals(link, n)

    def oldest_pending_reversal(self, link: str, queued_at: float | None) -> None:
        self.m.set_oldest_pending_reversal(link, queued_at)


class IssuerLink:
    """One persistent H2H connection to an issuer; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str = "issuer",
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        echo_interval: float = 30.0,
        echo_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        reversal_timeout: float | None = None,
        reversal_retry: float = 1.0,
        reversal_retry_max: float = 60.0,
        reversal_store: ReversalStore | None = None,
        metrics: Any = None,
        coalesce: bool = True,
    ) -> None:
        self.host, self.port, self.name = host, port, name
        self.coalesce = coalesce
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.echo_interval = echo_interval
        self.echo_timeout = echo_timeout
        self.backoff = backoff
        self.reversal_timeout = reversal_timeout if reversal_timeout is not None else timeout
        self.reversal_retry = reversal_retry
        #: store-and-forward backoff: the pause after a round with no answer doubles up to this
        self.reversal_retry_max = max(reversal_retry, reversal_retry_max)
        self.reversal_delay = reversal_retry  # the pause before the next round if this one gets no answer
        self._retry_now = asyncio.Event()  # set when the link comes up: pending items go at once
        self.reversals: ReversalStore = reversal_store or MemoryReversalStore()
        # metric hooks, looked up once (missing ones are no-ops)
        if metrics is not None and hasattr(metrics, "issuer_link_up") and not hasattr(metrics, "link_state"):
            metrics = SwitchMetricsHooks(metrics)
        self._m_state: Callable[..., None] = getattr(metrics, "link_state", _noop)
        self._m_latency: Callable[..., None] = getattr(metrics, "upstream_latency", _noop)
        self._m_pending: Callable[..., None] = getattr(metrics, "pending_reversals", _noop)
        self._m_oldest: Callable[..., None] = getattr(metrics, "oldest_pending_reversal", _noop)
        self._m_timeout: Callable[..., None] = getattr(metrics, "timeout", _noop)
        self._m_late: Callable[..., None] = getattr(metrics, "late_response", _noop)
        self.state = LinkState.DOWN
        self.connects = 0
        self._proto: _LinkProtocol | None = None
        #: requests awaiting an answer, by upstream STAN: (match key (11, 41, 37), future, deadline)
        self._inflight: dict[str, tuple[tuple[str, str, str], asyncio.Future[dict[str, str]], float]] = {}
        #: per timeout value, (deadline, STAN) of the requests sent with it, oldest first
        self._deadlines: dict[float, collections.deque[tuple[float, str]]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf
        self._stan = random.randrange(1, 999999)
        self._tasks: list[asyncio.Task[None]] = []
        self._up = asyncio.Event()
        self._reversal_wake = asyncio.Event()
        self._closing = False
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside a loop: start() binds it
            self._loop = None  # type: ignore[assignment]
        self._last_rx = self._last_tx = 0.0
        self._attempted: set[int] = set()
        self._queued_by_key: dict[tuple[str, str], int] = {}
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- lifecycle
    async def start(self, wait: float | None = None) -> IssuerLink:
        """Start the connection manager, echo and reversal tasks; ``wait`` s for the first connect."""
        self._loop = asyncio.get_running_loop()
        self._up = asyncio.Event()
        self._reversal_wake = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._watchdog, self._watchdog_at = None, math.inf  # a timer of an earlier loop never fires
        self._tasks = [self._loop.create_task(c) for c in (self._run(), self._echoer(), self._reverser())]
        if wait:
            await self.wait_up(wait)
        return self

    async def wait_up(self, timeout: float) -> None:
        """Wait until the link is up (raises :class:`IssuerUnavailable` after ``timeout``)."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            raise IssuerUnavailable(f"{self.name}: not connected after {timeout} s") from None

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *self._side_tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._proto is not None:
            self._proto._flush()
            if self._proto.transport is not None:
                self._proto.transport.close()
        self._fail_inflight()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog, self._watchdog_at = None, math.inf
        self._deadlines.clear()
        self._set_state(LinkState.CLOSED)

    @property
    def is_up(self) -> bool:
        return self.state == LinkState.UP

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def pending_reversals(self) -> int:
        return await self.reversals.count(self.name)

    async def _report_pending(self) -> None:
        """Depth and age of this link's store-and-forward queue, for the metrics."""
        n = await self.reversals.count(self.name)
        self._m_pending(self.name, n)
        oldest = getattr(self.reversals, "oldest", None)
        self._m_oldest(self.name, await oldest(self.name) if n and oldest is not None else None)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            # up/down/closed transitions at info; the connecting <-> down churn of a dead peer at debug
            level = logging.INFO if LinkState.UP in (state, self.state) or state == LinkState.CLOSED else logging.DEBUG
            log.log(level, "issuer_link_state", extra=kv(link=self.name, state=state, host=self.host,
                                                         port=self.port))
        if state == LinkState.UP and self.state != LinkState.UP:
            self.reversal_delay = self.reversal_retry  # a fresh connection: store-and-forward starts over
            self._retry_now.set()
        self.state = state
        self._m_state(self.name, state == LinkState.UP)

    async def _run(self) -> None:
        delay = self.backoff[0]
        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            try:
                _, proto = await asyncio.wait_for(
                    self._loop.create_connection(lambda: _LinkProtocol(self), self.host, self.port),
                    self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                self._set_state(LinkState.DOWN)
                log.debug("issuer_connect_failed", extra=kv(link=self.name, error=str(exc), retry_in=delay))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self.connects += 1
            self._proto = proto
            self._last_rx = self._last_tx = self._loop.time()
            self._set_state(LinkState.UP)
            self._up.set()
            self._reversal_wake.set()
            try:
                await proto.closed
            finally:
                self._up.clear()
                self._proto = None
                self._fail_inflight()
            if not self._closing:
                self._set_state(LinkState.DOWN)

    def _fail_inflight(self) -> None:
        inflight, self._inflight = self._inflight, {}
        for _, fut, _ in inflight.values():
            if not fut.done():
                fut.set_exception(_Lost())

    # ---------------------------------------------------------------- request / response
    def _next_stan(self) -> str:
        inflight = self._inflight
        for _ in range(1000):
            self._stan = self._stan % 999999 + 1
            stan = f"{self._stan:06d}"
            if stan not in inflight:
                return stan
        raise IssuerUnavailable(f"{self.name}: no free STAN")

    def _on_message(self, msg: dict[str, str]) -> None:
        stan = msg.get("11", "")
        entry = self._inflight.get(stan)
        if entry is not None and entry[0] == (stan, msg.get("41", ""), msg.get("37", "")):
            del self._inflight[stan]
            fut = entry[1]
            if not fut.done():
                fut.set_result(msg)
                return
        self._m_late(self.name)
        log.warning("issuer_unmatched_response", extra=kv(link=self.name, mti=msg.get("t"),
                                                         stan=msg.get("11"), rrn=msg.get("37"),
                                                         rc=msg.get("39")))
        # a late 0430/0230 still acknowledges its queued message (the issuer did process it)
        item = self._queued_by_key.get((msg.get("41", ""), msg.get("37", "")))
        if item is not None and msg.get("t") in ("0430", "0230"):
            self._spawn(self._ack(item, msg.get("39", ""), late=True))

    def _arm_watchdog(self, when: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self._loop.call_at(when, self._check_deadlines)
        self._watchdog_at = when

    def _check_deadlines(self) -> None:
        """Fail the requests whose deadline passed with ``TimeoutError``; re-arm for the next one."""
        self._watchdog, self._watchdog_at = None, math.inf
        inflight = self._inflight
        if not inflight:  # every queued deadline belongs to an answered (or failed) request
            self._deadlines.clear()
            return
        now = self._loop.time()
        nearest = math.inf
        for timeout, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                stan = queue.popleft()[1]
                entry = inflight.get(stan)
                # answered requests left the dict; a reused STAN carries its own (later) deadline
                if entry is not None and entry[2] <= now:
                    del inflight[stan]
                    fut = entry[1]
                    if not fut.done():
                        fut.set_exception(TimeoutError())
            if queue:
                nearest = min(nearest, queue[0][0])
            else:
                del self._deadlines[timeout]
        if nearest != math.inf:
            self._arm_watchdog(max(nearest, now + _TICK))

    async def _exchange(self, msg: dict[str, str], timeout: float | None) -> dict[str, str]:
        """Send ``msg`` with a fresh STAN and field 7 (set in ``msg``); raise ``TimeoutError`` / ``_Lost``."""
        proto = self._proto
        if proto is None:
            raise _NotSent()
        stan = self._next_stan()
        prev = (msg.get("11", _MISSING), msg.get("7", _MISSING))
        msg["11"] = stan
        msg["7"] = h2h.transmission_time()
        try:
            wire = h2h.frame(msg)  # H2HError propagates: a bad message is the caller's bug
        except BaseException:
            for k, v in zip(("11", "7"), prev, strict=True):  # leave msg as it was
                if v is _MISSING:
                    msg.pop(k, None)
                else:
                    msg[k] = v
            raise
        loop = self._loop
        fut: asyncio.Future[dict[str, str]] = loop.create_future()
        if timeout is None:
            deadline = math.inf
        else:
            deadline = loop.time() + timeout
            queue = self._deadlines.get(timeout)
            if queue is None:
                queue = self._deadlines[timeout] = collections.deque()
            queue.append((deadline, stan))
            if deadline < self._watchdog_at:
                self._arm_watchdog(deadline)
        entry = ((stan, msg.get("41", ""), msg.get("37", "")), fut, deadline)
        self._inflight[stan] = entry
        try:
            try:
                proto.send(wire)
            except _Lost:
                raise _NotSent() from None
            return await fut
        finally:
            if self._inflight.get(stan) is entry:
                del self._inflight[stan]

    async def request(self, msg: dict[str, str], timeout: float | None = None) -> dict[str, str]:
        """Send a request and return the issuer's answer.

        Raises :class:`IssuerUnavailable` when the link is down (nothing sent) and
        :class:`IssuerTimeout` when no answer came in time (a 0420 is queued if reversible).
        ``msg`` is not modified; fields 11 and 7 are set by the link.
        """
        if self._proto is None:
            raise IssuerUnavailable(f"{self.name}: link {self.state}")
        timeout = self.timeout if timeout is None else timeout
        sent = dict(msg)
        t0 = self._loop.time()
        try:
            resp = await self._exchange(sent, timeout)
        except _NotSent:
            raise IssuerUnavailable(f"{self.name}: link down") from None
        except (TimeoutError, _Lost) as exc:
            lost = isinstance(exc, _Lost)
            self._m_timeout(self.name)
            reversed_ = h2h.is_reversible(sent)
            log.warning("issuer_timeout", extra=kv(link=self.name, mti=sent.get("t"), stan=sent.get("11"),
                                                  rrn=sent.get("37"), connection_lost=lost,
                                                  reversal=reversed_))
            if reversed_:
                await self.reverse(sent, "98")
            raise IssuerTimeout(f"{self.name}: no answer to {sent.get('t')} stan {sent.get('11')}") from None
        self._m_latency(self.name, sent.get("t", ""), self._loop.time() - t0, resp.get("39", ""))
        return resp

    # ---------------------------------------------------------------- reversals
    async def reverse(self, original: dict[str, str], reason: str = "98") -> int:
        """Queue a 0420 for ``original`` (as sent upstream, or rebuilt from the journal: t, 2, 3, 4,
        11, 37, 41, 42, 49; field 7 may be missing) and return its queue id."""
        orig = dict(original)
        orig.setdefault("11", "000000")
        orig.setdefault("7", "0000000000")
        rev = h2h.reversal_for(orig, reason)
        item = await self.reversals.add(self.name, rev)
        await self._report_pending()
        log.info("reversal_queued", extra=kv(link=self.name, id=item, orig_stan=orig.get("11"),
                                             rrn=orig.get("37"), reason=reason))
        self._reversal_wake.set()
        return item

    async def advise(self, msg: dict[str, str]) -> int:
        """Store-and-forward an advice (0220: refund, completion advice): queued with the reversals,
        sent as 0220 then repeated as 0221 until a 0230 arrives. The issuer deduplicates repeats on
        41 + 37. Returns the queue id. Use it when the switch has already answered the terminal."""
        if not h2h.is_advice(msg):
            raise ValueError(f"advise() takes a 0220 advice, not {msg.get('t')}")
        item = await self.reversals.add(self.name, dict(msg))
        await self._report_pending()
        log.info("advice_queued", extra=kv(link=self.name, id=item, rrn=msg.get("37")))
        self._reversal_wake.set()
        return item

    async def _reverser(self) -> None:
        try:  # what a previous process left in the durable store shows at once, even with the issuer down
            await self._report_pending()
        except Exception as exc:
            log.warning("pending reversals not counted", extra=kv(link=self.name, error=repr(exc)))
        while not self._closing:
            await self._reversal_wake.wait()
            self._reversal_wake.clear()
            while not self._closing:
                pending = await self.reversals.pending(self.name)
                if not pending:
                    break
                await self._up.wait()
                # pipelined: a batch of 0420s leaves in one write, each waits for its own 0430
                acked = await asyncio.gather(*(self._send_reversal(i, r) for i, r in pending[:REVERSAL_BATCH]))
                if any(acked):
                    self.reversal_delay = self.reversal_retry
                    await self._report_pending()
                else:  # nothing answered: back off (doubling, capped) so a sick issuer is not hammered
                    self._retry_now.clear()
                    delay = self.reversal_delay
                    self.reversal_delay = min(delay * 2, self.reversal_retry_max)
                    with contextlib.suppress(TimeoutError):  # a reconnect ends the pause early
                        await asyncio.wait_for(self._retry_now.wait(), delay)

    async def _send_reversal(self, item: int, rev: dict[str, str]) -> bool:
        if item in self._attempted and rev.get("t") in ("0420", "0220"):
            rev["t"] = rev["t"][:3] + "1"    # a repeat: 0421 / 0221
        self._attempted.add(item)
        self._queued_by_key[(rev.get("41", ""), rev.get("37", ""))] = item
        try:
            resp = await self._exchange(rev, self.reversal_timeout)
        except (TimeoutError, _Lost):
            log.info("reversal_retry", extra=kv(link=self.name, id=item, rrn=rev.get("37")))
            return False
        return await self._ack(item, resp.get("39", ""))

    async def _ack(self, item: int, code: str, late: bool = False) -> bool:
        if item not in self._attempted:  # acknowledged already (a late answer and a repeat's)
            return True
        self._attempted.discard(item)
        for k, v in list(self._queued_by_key.items()):
            if v == item:
                del self._queued_by_key[k]
        await self.reversals.ack(item, code)
        log.info("reversal_acked", extra=kv(link=self.name, id=item, rc=code, late=late,
                                            done=code in h2h.REVERSAL_DONE))
        if late:
            await self._report_pending()
        return True

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ---------------------------------------------------------------- echo
    async def _echoer(self) -> None:
        while not self._closing:
            await self._up.wait()
            idle_since = max(self._last_rx, self._last_tx)
            wait = idle_since + self.echo_interval - self._loop.time()
            if wait > 0:
                await asyncio.sleep(min(wait, self.echo_interval))
                continue
            proto = self._proto
            try:
                resp = await self._exchange(h2h.echo_request("000000"), self.echo_timeout)
                if resp.get("39") != "00":
                    log.warning("issuer_echo_refused", extra=kv(link=self.name, rc=resp.get("39")))
            except (TimeoutError, _Lost):
                log.warning("issuer_echo_timeout", extra=kv(link=self.name))
                if proto is not None and proto is self._proto:
                    proto.abort()
                await asyncio.sleep(0)
