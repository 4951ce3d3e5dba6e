"""Talking to the issuer for a flow: route, PIN translation, request, journal bookkeeping.

``authorize`` is the common path of every online financial request (balance, sale, pre-auth,
completion, void, refund): pick the route by BIN, translate the PIN block TPK → ZPK in the HSM,
journal the request, send it on the issuer link and turn the outcome into field 39.  An approval
is committed to the journal (group commit) before this function returns, so the reply can never
reach the terminal ahead of its journal row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from switch import h2h
from switch.flows import wire
from switch.flows.context import RC, Context
from switch.hsm_client import HsmError
from switch.logsafe import kv

try:
    from switch.issuer_link import IssuerTimeout, IssuerUnavailable
except ImportError:  # pragma: no cover - until the issuer link lands

    class IssuerTimeout(Exception):  # type: ignore[no-redef]
        pass

    class IssuerUnavailable(Exception):  # type: ignore[no-redef]
        pass


log = logging.getLogger("switch.flows")

#: journal txn types without an H2H kind of their own
_H2H_KIND = {"completion_void": "void"}

#: transaction types sent as 0220 advices: approved by the switch and forwarded when the issuer is silent
ADVICES = frozenset({"refund", "completion_advice"})

#: HSM error codes of a PIN block that is not valid under the terminal's PIK (payment-crypto §9)
_PIN_BLOCK_ERRORS = frozenset({"20", "23", "24"})

#: journal txn type -> (H2H MTI, processing code) of the original request
_H2H_CODES = {kind.value: codes[:2] for kind, codes in h2h.KIND_CODES.items()}

#: 60.1 / entry mode -> payment method label for the journal
_METHOD = {"01": "keyed", "02": "swipe", "05": "chip", "07": "contactless", "03": "qr", "98": "contactless"}


@dataclass(slots=True)
class Outcome:
    rc: str
    txn_id: int | None = None
    rrn: str = ""
    auth_code: str = ""
    upstream: dict[str, str] | None = None
    route: Any = None
    #: the approval's journal commit when it was deferred (``authorize(defer_commit=True)``)
    committed: Any = None


def payment_method(req: dict[str, str]) -> str:
    f22 = req.get("22", "")[:2]
    if f22 == "02" and (req.get("60") or "")[12:13] == "2":  # wire.Field60.parse(60).rest[1:2], read in place
        return "fallback"
    return _METHOD.get(f22, "keyed")


@functools.lru_cache(maxsize=4096)
def _batch_of_60(f60: str) -> int:
    batch = f60[2:8]
    return int(batch) if batch.isdigit() else 0


def batch_of(req: dict[str, str]) -> int:
    """60.2 batch number of a request (parsed once per distinct field 60 value)."""
    return _batch_of_60(req.get("60") or "")


def claim(ctx: Context) -> tuple[tuple[Any, ...], asyncio.Future[Any] | None]:
    """Claim (41, 42, batch, 11, MTI class) for this request before the first await.

    Returns ``(key, None)`` when this request owns the key, or ``(key, future)`` when a copy of it
    (a duplicated frame) is already in flight: await the future for the first copy's outcome.
    """
    req, term = ctx.req, ctx.terminal
    key = (term.tid, term.mid, batch_of(req), req.get("11", ""), req["t"][:2])
    inflight = ctx.services.inflight_keys
    if key in inflight:  # the future is made only when a copy actually waits for it
        first = inflight[key]
        if first is None:
            first = inflight[key] = loop_of(ctx).create_future()
        return key, first
    inflight[key] = None
    return key, None


def loop_of(ctx: Context) -> asyncio.AbstractEventLoop:
    """The switch's event loop (cached on the services: ``get_running_loop`` costs a getpid())."""
    loop = ctx.services.loop
    if loop is None:
        loop = ctx.services.loop = asyncio.get_running_loop()
    return loop  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def original_lock(ctx: Context, orig_id: int) -> AsyncIterator[None]:
    """Serialise every flow acting on one original row (void, refund, completion, reversal):
    concurrent operations on the same sale must see each other's result (re-read the row inside)."""
    locks = ctx.services.original_locks
    entry = locks.get(orig_id)
    if entry is None:
        entry = locks[orig_id] = [asyncio.Lock(), 0]
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            locks.pop(orig_id, None)


def wait_before_reply(ctx: Context, fut: Any) -> None:
    """The reply to this request must not be written before ``fut`` (a journal write) is done."""
    if ctx.before_reply is None:
        ctx.before_reply = [fut]
    else:
        ctx.before_reply.append(fut)


def release(ctx: Context, key: tuple[Any, ...], outcome: Any) -> None:
    fut = ctx.services.inflight_keys.pop(key, None)
    if fut is not None and not fut.done():
        fut.set_result(outcome)


async def authorize(ctx: Context, txn_type: str, *, mti_up: str | None = None, amount: int | None = None,
                    original: Any = None, defer_commit: bool = False) -> Outcome:
    """Route, translate the PIN, journal, ask the issuer; returns the outcome (39 and references).

    A copy of the same request (same terminal, batch, STAN and MTI class) arriving while the first
    is in flight gets the first one's outcome (nothing goes upstream twice); a copy arriving after
    the first was journaled gets 94.

    ``defer_commit``: return as soon as the approval's journal commit is queued; the commit is put
    on ``ctx.before_reply``, which the dispatcher awaits (next to the reply MAC) before any reply is
    written.  Only for flows that do nothing after ``authorize`` but build the reply.
    """
    key, first = claim(ctx)
    if first is not None:
        out = await asyncio.shield(first)
        if out is None:
            return Outcome(RC.DUPLICATE)
        if out.committed is not None:  # this copy's reply, too, waits for the first one's commit
            wait_before_reply(ctx, out.committed)
        return out
    out: Outcome | None = None
    try:
        out = await _authorize(ctx, txn_type, mti_up, amount, original, defer_commit)
        return out
    finally:
        release(ctx, key, out)


async def _authorize(ctx: Context, txn_type: str, mti_up: str | None, amount: int | None,
                     original: Any, defer_commit: bool = False) -> Outcome:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    if req.get("53", "")[2:3] == "1":  # tracks encrypted under the TDK: decrypt in the HSM first
        if not term.tdk_under_lmk:
            return Outcome(RC.FORMAT_ERROR)
        for f in ("35", "36"):
            if f in req:
                req[f] = await svc.security.decrypt_track(term, req[f])
    pan = wire.pan_of(req)
    if not pan or not pan.isdigit() or not 12 <= len(pan) <= 19:
        return Outcome(RC.INVALID_CARD)
    route = svc.router.lookup(pan)
    if route is None:
        return Outcome(RC.NO_SUCH_ISSUER)
    if not route.up and txn_type not in ADVICES:  # advices are stored and forwarded
        return Outcome(RC.ISSUER_LINK_DOWN, route=route)
    pin_block = None
    if "52" in req:
        if not route.zpk_under_lmk:
            return Outcome(RC.SYSTEM_ERROR, route=route)
        pre = ctx.pin_prefetch  # sent with the MAC check when route and block were already known
        if pre is not None and pre[0] == route.zpk_under_lmk and pre[1] == req["52"] and pre[2] == pan:
            ctx.pin_prefetch = None
            translating = pre[3]
        else:
            translating = svc.security.translate_pin_submit(term, route.zpk_under_lmk, bytes.fromhex(req["52"]), pan)
        try:
            zpb = await translating
        except HsmError as exc:
            if exc.code in _PIN_BLOCK_ERRORS:  # the block does not decode under this terminal's PIK
                return Outcome(RC.PIN_FORMAT, route=route)
            raise
        pin_block = zpb.hex().upper()
    journal = svc.journal
    stan = req.get("11", "")
    batch = batch_of(req)
    if (stan.isdigit() and not journal.trace_absent(term.tid, term.mid, stan)  # (the filter's usual "no")
            and await journal.find_by_trace(term.tid, term.mid, batch, stan, req["t"][:2])):
        return Outcome(RC.DUPLICATE, route=route)  # same terminal, batch and STAN: a retransmission
    rrn = journal.next_rrn()
    try:
        up = h2h.financial_request(
            _H2H_KIND.get(txn_type, txn_type), terminal_id=term.tid, merchant_id=term.mid, rrn=rrn,
            amount=amount if amount is not None else (int(req["4"]) if "4" in req else None),
            pan=pan, track2=req["35"].replace("D", "=") if "35" in req else None, expiry=req.get("14"),
            entry_mode=req.get("22", "021"), psn=req.get("23"), pin_block=pin_block,
            icc=h2h.field55_tags(req["55"]) if "55" in req else None,
            auth_code=original.auth_code if original is not None and original.auth_code else None,
            original=original_h2h(original, svc.acquirer_id) if original is not None else None,
            acquirer_id=svc.acquirer_id, currency=req.get("49", "156"), stan=req.get("11", "000000"),
        )
    except h2h.H2HError:
        return Outcome(RC.FORMAT_ERROR, route=route)
    if mti_up:
        up["t"] = mti_up
    if txn_type == "completion_void":
        up["25"] = "06"  # a void (0200/200000) in the pre-authorisation family
    txn = {
        "terminal_id": term.tid, "merchant_id": term.mid, "txn_type": txn_type, "mti": req["t"],
        "processing_code": req.get("3", ""), "state": "sent", "amount": int(up.get("4", "0") or 0),
        "currency": req.get("49", "156"), "stan": stan, "batch": batch, "rrn": rrn,
        "card_org": route.card_org, "payment_method": payment_method(req), "entry_mode": req.get("22", ""),
        "issuer": route.name, "pan": pan,
    }
    if original is not None:
        txn["original_id"] = original.id
    txn_id = await journal.record_soon(txn)
    try:
        resp = await route.link.request(up, timeout=svc.issuer_timeout)  # None: the link's own timeout
    except (IssuerTimeout, IssuerUnavailable) as exc:
        if up["t"] == "0220":  # an advice (refund, completion advice): approve here, store and forward
            await route.link.advise(up)
            log.warning("issuer did not answer an advice, queued for store-and-forward",
                        extra=kv(issuer=route.name, tid=term.tid, rrn=rrn, error=type(exc).__name__))
            await journal.commit_approval(txn_id, rrn=rrn, auth_code="", response_code=RC.APPROVED)
            return Outcome(RC.APPROVED, txn_id, rrn, route=route)
        if isinstance(exc, IssuerUnavailable):
            log.warning("issuer unavailable", extra=kv(issuer=route.name, tid=term.tid, stan=req.get("11")))
            await journal.update_state(txn_id, "declined", response_code=RC.ISSUER_UNAVAILABLE)
            return Outcome(RC.ISSUER_UNAVAILABLE, txn_id, rrn, route=route)
        log.warning("issuer timeout", extra=kv(issuer=route.name, tid=term.tid, stan=req.get("11"), rrn=rrn))
        await journal.update_state(txn_id, "reversed", response_code=RC.ISSUER_TIMEOUT)
        return Outcome(RC.ISSUER_TIMEOUT, txn_id, rrn, route=route)
    except Exception:  # the request may have reached the issuer and nothing will answer the terminal: undo it
        await undo_in_doubt(journal, route, up, None, txn_id, "issuer request failed")
        raise
    rc = resp.get("39", RC.SYSTEM_ERROR)  # (the link itself records the issuer round trip metric)
    auth = resp.get("38", "")
    if txn_id in svc.reversed_in_flight:  # the terminal reversed it while we waited for the issuer
        svc.reversed_in_flight.discard(txn_id)
        if rc in h2h.APPROVED:
            await route.link.reverse(_as_sent(up, resp), "98")
        await journal.update_state(txn_id, "reversed", response_code=rc)
        return Outcome(RC.ISSUER_TIMEOUT if rc in h2h.APPROVED else rc, txn_id, rrn, route=route)
    if rc in h2h.APPROVED:  # 00, and 10 partial approval (F4 may be lower) / 11 VIP
        extra = {"card_org": resp["63"][:3]} if len(resp.get("63", "")) >= 3 else {}
        if rc == RC.PARTIAL and resp.get("4", "").isdigit():
            extra["amount"] = int(resp["4"])
        try:
            committed = journal.commit_approval_soon(  # rrn=None: the row holds it since record()
                txn_id, rrn=None, auth_code=auth, response_code=rc,
                upstream_ref=f"{resp.get('11', '')}|{resp.get('7', '')}", **extra)
            if defer_commit:  # queued now; the dispatcher awaits it before the reply is written (96 if it fails)
                wait_before_reply(ctx, committed)
                committed.add_done_callback(functools.partial(_undo_if_unrecorded, journal, route, up, resp, txn_id))
                return Outcome(rc, txn_id, rrn, auth, resp, route, committed)
            await committed
        except Exception:
            await undo_in_doubt(journal, route, up, resp, txn_id, "approval not recorded")
            raise
    else:
        await journal.update_state(txn_id, "declined", response_code=rc)
    return Outcome(rc, txn_id, rrn, auth, resp, route)


def _as_sent(up: dict[str, str], resp: dict[str, str] | None) -> dict[str, str]:
    """``up`` with the STAN (11) and transmission time (7) the link gave it, as the issuer echoed them."""
    echoed = resp or {}
    return {**up, "11": echoed.get("11", up.get("11", "")), "7": echoed.get("7", up.get("7", ""))}


async def undo_in_doubt(journal: Any, route: Any, up: dict[str, str], resp: dict[str, str] | None, txn_id: int,
                        why: str) -> None:
    """The issuer may have approved ``up`` but the terminal will be told 96 (an unexpected failure after
    the request went upstream, or an approval the journal could not record): queue a 0420 and mark the
    row reversed.  Best effort: if the journal is what failed, the row stays in flight and the next
    start-up's recovery reverses it."""
    log.error("in-doubt transaction reversed upstream", extra=kv(issuer=route.name, rrn=up.get("37"), why=why))
    try:
        await route.link.reverse(_as_sent(up, resp), RC.SYSTEM_ERROR)
        await journal.update_state(txn_id, "reversed", response_code=RC.SYSTEM_ERROR)
    except Exception as exc:
        log.error("in-doubt transaction: reversal not recorded, recovery will retry at start-up",
                  extra=kv(issuer=route.name, rrn=up.get("37"), error=repr(exc)))


_undo_tasks: set[asyncio.Task[None]] = set()  # keeps the reversals of unrecorded approvals referenced


def _undo_if_unrecorded(journal: Any, route: Any, up: dict[str, str], resp: dict[str, str], txn_id: int,
                        committed: asyncio.Future[Any]) -> None:
    if committed.cancelled() or committed.exception() is None:
        return
    task = asyncio.ensure_future(undo_in_doubt(journal, route, up, resp, txn_id, "approval not recorded"))
    _undo_tasks.add(task)
    task.add_done_callback(_undo_tasks.discard)


def fill_reply(ctx: Context, out: Outcome) -> dict[str, str]:
    """Reply fields of an online financial request from its outcome."""
    reply = ctx.start_reply(out.rc, extra=("23",))
    if out.rrn:
        reply["37"] = out.rrn
    if out.auth_code:
        reply["38"] = out.auth_code
    if out.rc == RC.PARTIAL and (out.upstream or {}).get("4", "").isdigit():
        reply["4"] = out.upstream["4"]  # type: ignore[index]  # the amount actually approved
    reply["15"] = reply["13"]
    up = out.upstream or {}
    if "55" in up:
        reply["55"] = up["55"]
    if "54" in up:
        reply["54"] = up["54"]
    if out.route is not None:
        reply["63"] = up["63"][:3] if len(up.get("63", "")) >= 3 else out.route.card_org  # 63.1 card org
        reply["44"] = _field44(out.route.name, ctx.services.acquirer_id)
    return reply


#: (issuer name, acquirer ID) -> field 44 of the reply (one entry per route)
_F44: dict[tuple[str, str], str] = {}


def _field44(issuer: str, acquirer_id: str) -> str:
    """Field 44: issuer and acquirer names, 11 characters each (formatted once per pair)."""
    key = (issuer, acquirer_id)
    f44 = _F44.get(key)
    if f44 is None:
        f44 = f"{issuer[:11]:<11}{acquirer_id[:11]:<11}"
        if len(_F44) < 256:
            _F44[key] = f44
    return f44


def original_h2h(orig: Any, acquirer_id: str) -> dict[str, str]:
    """The H2H request of a journaled original, rebuilt for field 90 and reversals.

    11 and 7 are the ones the link sent (kept in the journal's ``upstream_ref``); failing that the
    terminal STAN and the row's creation time.  The issuer also matches on 41 + 37 (our unique RRN).
    """
    mti, proc = _H2H_CODES.get(orig.txn_type, (orig.mti or "0200", orig.processing_code or "000000"))
    up_stan, _, up_f7 = (getattr(orig, "upstream_ref", "") or "").partition("|")
    doc = {
        "t": mti, "3": orig.processing_code or proc, "4": f"{int(orig.amount):012d}",
        "7": time.strftime("%m%d%H%M%S", time.gmtime(orig.created_at or time.time())),
        "11": f"{int(orig.stan or 0):06d}", "32": acquirer_id, "37": orig.rrn,
        "41": orig.terminal_id.ljust(8), "42": orig.merchant_id.ljust(15), "49": orig.currency or "156",
        **({"38": orig.auth_code} if orig.auth_code else {}),
    }
    if len(up_stan) == 6 and len(up_f7) == 10:  # exactly what the link sent upstream
        doc["11"], doc["7"] = up_stan, up_f7
    return doc


async def reverse_upstream(ctx: Context, orig: Any, reason: str) -> None:
    """Queue a reversal of an approved original on its issuer link (retried there until acked)."""
    route = ctx.services.router.routes.get(orig.issuer)
    if route is None:
        log.error("cannot reverse upstream: unknown route", extra=kv(issuer=orig.issuer, rrn=orig.rrn))
        return
    await route.link.reverse(original_h2h(orig, ctx.services.acquirer_id), reason=reason or "98")
