"""Request dispatch: terminal check, MAC check, flow selection, reply MAC.

:class:`Processor.process` turns one decoded terminal request into one encoded reply body.
It is the only place that knows the §4 transaction table (MTI, processing code, 60.1) and the
§6 list of MACed messages; the flows themselves live in one module per family.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from switch.flows import wire
from switch.flows.context import PR_SIGN_ON_AGAIN, RC, Context
from switch.logsafe import kv

log = logging.getLogger("switch.flows")

Flow = Callable[[Context], Awaitable[None]]

#: transaction types whose flow translates a PIN block through ``upstream.authorize``
_PIN_FLOWS = frozenset({"sale", "balance", "preauth", "completion", "void", "preauth_void", "completion_void",
                        "refund"})


def _mac_input(reply: dict[str, str]) -> bytes:
    """MAC input of ``reply`` encoded with field 64 (zeros until the HSM computed it): the reply
    body is this plus the 8 MAC bytes.  Field 64 is set in place for the encode (no dict copy)."""
    had = reply.get("64")
    reply["64"] = "0000000000000000"
    try:
        return wire.mac_input(wire.encode(reply))
    finally:
        if had is None:
            del reply["64"]
        else:
            reply["64"] = had


@dataclass(slots=True)
class Services:
    """Everything a flow may use; built once by the server."""

    registry: Any  # switch.terminals.TerminalRegistry
    journal: Any  # switch.journal.Journal
    security: Any  # switch.flows.security.Security
    router: Any  # switch.routing.Router
    metrics: Any = None  # switch.metrics.SwitchMetrics | None
    acquirer_id: str = "48020000"
    issuer_timeout: float | None = None  # None: each issuer link's configured timeout
    qr_wait: float = 30.0  # longest a QR sale waits for the customer's confirmation (inside the terminal timeout)
    qr_poll: float = 3.0  # order status query interval while the customer confirms
    batch_seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    #: the event loop the flows run on (set by the server; found on first use otherwise)
    loop: Any = None
    #: (41, 42, batch, 11, MTI class) of financial requests being processed -> future of their
    #: outcome (None until a duplicate copy waits for it)
    inflight_keys: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    #: journal id of an original -> [lock, users]: void/refund/completion/reversal of one row run one at a time
    original_locks: dict[int, Any] = field(default_factory=dict)
    #: journal ids of requests still waiting for the issuer when the terminal reversed them
    reversed_in_flight: set[int] = field(default_factory=set)


@dataclass(slots=True, frozen=True)
class Entry:
    flow: Flow
    txn_type: str
    maced: bool


class Processor:
    """Routes decoded requests to flows; owns the MAC rules."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._table: dict[tuple[str, ...], Entry] = {}
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        #: global bound on requests that use the HSM or an issuer (0 = none); set from Limits
        self.max_total_in_flight = 0
        self.busy = 0
        self.overloaded = 0
        from switch import signon
        from switch.flows import financial, refund, reversal, settlement

        for mod in (signon, financial, refund, reversal, settlement):
            for key, (flow, txn_type, maced) in mod.FLOWS.items():
                self._table[key] = Entry(flow, txn_type, maced)

    def select(self, req: dict[str, str]) -> Entry | None:
        mti = req["t"]
        f60 = req.get("60", "")
        table = self._table
        entry = table.get((mti, req.get("3", "")[:2], f60[:2]))
        if entry is None:
            entry = table.get((mti, f60[8:11]))
        if entry is None:
            entry = table.get((mti,))
        return entry

    async def process(self, req: dict[str, str], body: bytes) -> tuple[bytes, int, Context]:
        """Handle one request; returns the encoded reply body, header digit 6 and the context."""
        svc = self.services
        ctx = Context(req, body, svc)
        entry = self.select(req)
        tid, mid = req.get("41"), req.get("42")
        if not tid or not mid:
            ctx.fail(RC.FORMAT_ERROR)
            return self._finish(ctx, None)
        term = svc.registry.get(tid, mid)
        if term is None or term.status != "active":
            ctx.fail(RC.UNKNOWN_TERMINAL if term is None or term.merchant_status == "active"
                     else RC.INVALID_MERCHANT)
            return self._finish(ctx, None)
        if term.merchant_status != "active":
            ctx.fail(RC.INVALID_MERCHANT)
            return self._finish(ctx, None)
        ctx.terminal = term
        if entry is None:
            ctx.fail(RC.INVALID_TXN)
            return self._finish(ctx, None)
        ctx.txn_type = entry.txn_type
        if not (entry.maced or entry.txn_type == "sign_on"):  # touches neither HSM nor issuer
            return await self._run(ctx, entry, term)
        if self.max_total_in_flight and self.busy >= self.max_total_in_flight:
            # global back-pressure: answer at once, without the HSM, the issuer or the journal
            self.overloaded += 1
            if svc.metrics is not None:
                svc.metrics.rejected_frames.labels("overload").inc()
            ctx.fail(RC.SYSTEM_ERROR)
            return self._finish(ctx, None)
        self.busy += 1
        try:
            return await self._run(ctx, entry, term)
        finally:
            self.busy -= 1

    async def _run(self, ctx: Context, entry: Entry, term: Any) -> tuple[bytes, int, Context]:
        svc, req = self.services, ctx.req
        if entry.maced:
            if not term.mak_under_lmk or not term.signed_on:  # never signed on, or signed off
                ctx.fail(RC.MAC_ERROR)
                ctx.processing_request = PR_SIGN_ON_AGAIN
                return self._finish(ctx, None)
            mac = req.get("64")
            try:
                if mac is None:
                    mac_ok = False
                else:
                    check = svc.security.verify_mac_submit(term, wire.mac_input(ctx.body), bytes.fromhex(mac))
                    self._prefetch_pin(ctx, term)  # the CA travels with the M8: one HSM round trip for both
                    mac_ok = await check
            except Exception as exc:  # HSM down or erroring: nothing is forwarded
                self._drop_prefetch(ctx)
                log.warning("MAC check failed in the HSM", extra=kv(tid=req.get("41"), stan=req.get("11"),
                                                                    error=str(exc)))
                ctx.fail(RC.SYSTEM_ERROR)
                return self._finish(ctx, None)
            if not mac_ok:
                self._drop_prefetch(ctx)
                log.warning("bad MAC", extra=kv(tid=req.get("41"), mid=req.get("42"), stan=req.get("11"),
                                                mti=req["t"]))
                if svc.metrics is not None:
                    svc.metrics.mac_failures.inc()
                ctx.fail(RC.MAC_ERROR)
                ctx.processing_request = PR_SIGN_ON_AGAIN  # A0 = "MAC error, sign on again"
                return self._finish(ctx, None)
            ctx.mac_reply = True
        try:
            await entry.flow(ctx)
        except Exception:
            log.exception("flow failed", extra=kv(tid=req.get("41"), mid=req.get("42"), stan=req.get("11"),
                                                  type=entry.txn_type))
            ctx.fail(RC.SYSTEM_ERROR)
        self._drop_prefetch(ctx)
        if term.resign_required and not ctx.processing_request:
            ctx.processing_request = PR_SIGN_ON_AGAIN
        if ctx.mac_reply and ctx.reply.get("39") != RC.MAC_ERROR:
            # The reply MAC is computed while the approval's journal commit (already queued by the
            # flow) completes; the reply leaves only when both are done (a 96 if the commit failed).
            mac_in = _mac_input(ctx.reply)
            reply_mac = await self._reply_mac(ctx, term, mac_in)
            if ctx.before_reply and not await self._before_reply(ctx):
                mac_in = _mac_input(ctx.reply)
                reply_mac = await self._reply_mac(ctx, term, mac_in)
            return self._finish(ctx, mac_in + reply_mac)
        if ctx.before_reply:
            await self._before_reply(ctx)
        return self._finish(ctx, None)

    def _prefetch_pin(self, ctx: Context, term: Any) -> None:
        """Send the PIN translation (TPK -> the issuer's ZPK) now, next to the MAC check.

        Only for flows that translate a PIN (``_PIN_FLOWS``) with clear tracks; the flow uses it when
        route and PIN block still match (``upstream._authorize``), otherwise it is discarded.  Nothing
        goes upstream before the MAC verified.
        """
        req = ctx.req
        pin_block = req.get("52")
        if pin_block is None or ctx.txn_type not in _PIN_FLOWS or req.get("53", "")[2:3] == "1":
            return
        pan = wire.pan_of(req)
        if not pan or not pan.isdigit() or not 12 <= len(pan) <= 19:
            return
        route = self.services.router.lookup(pan)
        if route is None or not route.zpk_under_lmk:
            return
        try:
            pending = self.services.security.translate_pin_submit(
                term, route.zpk_under_lmk, bytes.fromhex(pin_block), pan)
        except Exception:  # the flow translates (and reports) on its own
            return
        ctx.pin_prefetch = (route.zpk_under_lmk, pin_block, pan, pending)

    @staticmethod
    def _drop_prefetch(ctx: Context) -> None:
        if ctx.pin_prefetch is not None:
            ctx.pin_prefetch[3].discard()
            ctx.pin_prefetch = None

    async def _reply_mac(self, ctx: Context, term: Any, mac_in: bytes) -> bytes:
        try:
            return bytes(await self.services.security.generate_mac_submit(term, mac_in))
        except Exception as exc:
            # No MAC: a terminal checks the MAC of an approval, finds it wrong and reverses the
            # transaction (0400, 39 = A0), which undoes it upstream; that is the safe outcome.
            log.error("reply MAC failed in the HSM", extra=kv(tid=ctx.req.get("41"), stan=ctx.req.get("11"),
                                                              error=str(exc)))
            return b"\x00" * 8

    async def _before_reply(self, ctx: Context) -> bool:
        """Wait for the journal writes the reply depends on; a failure turns the reply into 96."""
        waits, ctx.before_reply = ctx.before_reply or [], None
        ok = True
        for wait in waits:
            try:
                await wait
            except Exception:
                log.exception("journal write before the reply failed", extra=kv(
                    tid=ctx.req.get("41"), stan=ctx.req.get("11"), type=ctx.txn_type))
                ok = False
        if not ok:
            ctx.fail(RC.SYSTEM_ERROR)
        return ok

    async def undelivered(self, ctx: Context) -> None:
        """The reply could not be written: reverse an approval the terminal will never see."""
        from switch.flows.reversal import reverse_undelivered

        try:
            await reverse_undelivered(ctx)
        except Exception:
            log.exception("reversal of an undelivered approval failed", extra=kv(rrn=ctx.reply.get("37")))

    def _finish(self, ctx: Context, body: bytes | None) -> tuple[bytes, int, Context]:
        m = self.services.metrics
        if m is not None:
            key = (ctx.txn_type, ctx.reply.get("39", ""))
            children = self._metric_children.get(key)
            if children is None:  # cached label children: no label lookup per message
                children = self._metric_children[key] = (m.transactions.labels(*key), m.e2e_latency.labels(key[0]))
            children[0].inc()
            children[1].observe(time.perf_counter() - ctx.started)
        if body is None:
            ctx.reply.pop("64", None)
            body = wire.encode(ctx.reply)
        return body, ctx.processing_request, ctx
