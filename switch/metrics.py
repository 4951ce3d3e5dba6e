"""Prometheus metrics and a health endpoint on their own HTTP port.

:class:`SwitchMetrics` owns a dedicated ``CollectorRegistry`` (nothing leaks in from other libraries or
tests) and the instruments the switch updates.  :meth:`SwitchMetrics.start` serves, on a separate
asyncio server (no extra dependency):

* ``GET /metrics``: the Prometheus text exposition;
* ``GET /health``: ``200`` with a JSON body when every registered check passes, else ``503``.

Label sets stay small and bounded: transaction type, response code, issuer name, HSM command.
Never a PAN, terminal id or merchant id as a label.  The instruments updated per request on the event
loop (transactions, their latency, HSM and issuer round trips) are lock-free ones from
:mod:`switch.loop_metrics`; the rest are prometheus-client's (the journal's is fed from its thread).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from switch.logsafe import kv
from switch.loop_metrics import LoopCounter, LoopHistogram

log = logging.getLogger("switch.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

HealthCheck = Callable[[], bool | Awaitable[bool]]

_MAX_REQUEST = 8192


class SwitchMetrics:
    """The switch's instruments, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        # updated per request on the event-loop thread: lock-free instruments (switch.loop_metrics)
        self.transactions = LoopCounter(
            "posswitch_transactions", "Transactions answered, by type and response code (39)",
            ["type", "response_code"], registry=r)
        self.e2e_latency = LoopHistogram(
            "posswitch_transaction_seconds", "Request received to reply written, by transaction type",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.issuer_latency = LoopHistogram(
            "posswitch_issuer_seconds", "Issuer round trip", ["issuer"], buckets=LATENCY_BUCKETS, registry=r)
        self.hsm_latency = LoopHistogram(
            "posswitch_hsm_seconds", "HSM command round trip", ["command"], buckets=FAST_BUCKETS, registry=r)
        self.in_flight = Gauge("posswitch_in_flight", "Requests being processed", registry=r)
        self.connected_terminals = Gauge("posswitch_connected_terminals", "Open terminal connections", registry=r)
        self.issuer_link_up = Gauge("posswitch_issuer_link_up", "1 when the issuer link is up", ["issuer"], registry=r)
        self.pending_reversals = Gauge("posswitch_pending_reversals", "Reversals not yet acknowledged", registry=r)
        #: per issuer link: unacknowledged store-and-forward items, and when the oldest was queued
        self._pending_by_link: dict[str, int] = {}
        self._oldest_by_link: dict[str, float] = {}
        self.pending_reversals_age = Gauge(
            "posswitch_pending_reversals_oldest_age_seconds",
            "Age of the oldest reversal or advice not yet acknowledged (0 when none)", registry=r)
        self.pending_reversals_age.set_function(self._oldest_pending_age)
        self.journal_commit_latency = Histogram(
            "posswitch_journal_commit_seconds", "Journal group commit duration", buckets=FAST_BUCKETS, registry=r)
        self.journal_commit_writes = Histogram(
            "posswitch_journal_commit_writes", "Writes per journal commit", buckets=BATCH_BUCKETS, registry=r)
        self.journal_wal_bytes = Gauge(
            "posswitch_journal_wal_bytes", "Size of the journal's write-ahead log file (read at scrape time)",
            registry=r)
        self.rejected_frames = Counter(
            "posswitch_rejected_frames", "Frames or messages refused, by reason", ["reason"], registry=r)
        self.mac_failures = Counter("posswitch_mac_failures", "Request MACs that did not verify", registry=r)
        self._checks: dict[str, HealthCheck] = {}
        self._server: asyncio.AbstractServer | None = None

    # -- helpers for the flows ------------------------------------------------------------------------
    def observe_transaction(self, txn_type: str, response_code: str, seconds: float) -> None:
        self.transactions.labels(txn_type, response_code).inc()
        self.e2e_latency.labels(txn_type).observe(seconds)

    def set_pending_reversals(self, link: str, n: int) -> None:
        """Depth of one link's store-and-forward queue; the gauge shows the sum over the links."""
        self._pending_by_link[link] = n
        self.pending_reversals.set(sum(self._pending_by_link.values()))

    def set_oldest_pending_reversal(self, link: str, queued_at: float | None) -> None:
        if queued_at is None:
            self._oldest_by_link.pop(link, None)
        else:
            self._oldest_by_link[link] = queued_at

    def _oldest_pending_age(self) -> float:
        oldest = min(self._oldest_by_link.values(), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def journal_commit_hook(self) -> Callable[[int, float], None]:
        """``on_commit`` callback for :class:`switch.journal.Journal` (thread-safe)."""

        def hook(writes: int, seconds: float) -> None:
            self.journal_commit_latency.observe(seconds)
            self.journal_commit_writes.observe(writes)

        return hook

    def watch_journal(self, journal: Any) -> None:
        """Feed the journal commit histograms, add a ``journal`` health check (writer alive) and the WAL
        size gauge (a store with a write-ahead log)."""
        journal.set_commit_hook(self.journal_commit_hook())
        self.set_health_check("journal", journal.is_healthy)
        if getattr(journal, "wal_bytes", None) is not None and journal.wal_bytes() is not None:
            self.journal_wal_bytes.set_function(journal.wal_bytes)

    def set_health_check(self, name: str, check: HealthCheck) -> None:
        """Register a check (sync or async, returns True when healthy) shown by ``/health``."""
        self._checks[name] = check

    async def health(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                results[name] = bool(value)
            except Exception as exc:  # a failing check is unhealthy, not a crash
                log.warning("health check failed", extra=kv(check=name, error=str(exc)))
                results[name] = False
        ok = all(results.values())
        return ok, {"status": "ok" if ok else "unhealthy", "checks": results}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- HTTP ------------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 9108) -> int:
        """Serve ``/metrics`` and ``/health``; returns the bound port (useful with ``port=0``)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("metrics listening", extra=kv(host=host, port=bound))
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                await self._reply(writer, 400, b"bad request\n", "text/plain")
                return
            if len(head) > _MAX_REQUEST:
                await self._reply(writer, 431, b"request header too large\n", "text/plain")
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                await self._reply(writer, 400, b"bad request line\n", "text/plain")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, b"method not allowed\n", "text/plain")
                return
            if target == "/metrics":
                await self._reply(writer, 200, self.exposition(), CONTENT_TYPE_LATEST, head_only=method == "HEAD")
            elif target == "/health":
                ok, doc = await self.health()
                body = (json.dumps(doc, sort_keys=True) + "\n").encode()
                await self._reply(writer, 200 if ok else 503, body, "application/json", head_only=method == "HEAD")
            else:
                await self._reply(writer, 404, b"not found\n", "text/plain")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, head_only: bool = False
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
        header = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n").encode("latin-1")
        writer.write(header if head_only else header + body)
        await writer.drain()
