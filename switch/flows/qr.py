"""QR payments, merchant scans the customer's payment code (WeChat Pay / Alipay / UnionPay QR).

No public POS dialect fixes how the code travels (pos-8583-dialect.md §13); ours: a sale
(0200/000000, 60.1 = 22) with 22 = ``03x`` and the payment code in field 48 (n..322, so 16-24 digit
Alipay codes fit) or, if it has at most 19 digits, field 2.  The wallet is chosen by payment-code
prefix (``[routes.qr]``).  Upstream: ``h2h.qr_pay_request``; a ``09`` answer means the customer is
confirming (password): the switch polls the order with ``h2h.qr_query_request`` every
``qr_poll`` s while holding the terminal's request, at most ``qr_wait`` s (a poll whose answer is
lost is simply repeated), then cancels the order with a 0420 and answers 98.  A void of a QR sale (same batch, full amount) cancels it upstream
with a 0420 (the wallet refunds a paid order).  QR rows are journaled with payment method ``qr``,
the wallet's transaction id as ``qr_order_no`` and card org ``CUP`` (domestic settlement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from switch import h2h
from switch.flows.context import RC, Context
from switch.flows.upstream import (
    IssuerTimeout,
    IssuerUnavailable,
    Outcome,
    batch_of,
    claim,
    fill_reply,
    release,
)
from switch.logsafe import kv

log = logging.getLogger("switch.flows")

PENDING = "09"
#: final query answers -> field 39 for the terminal
_QUERY_FINAL = {"00": RC.APPROVED, "05": RC.DO_NOT_HONOUR, "12": RC.DO_NOT_HONOUR, "25": RC.ORIGINAL_NOT_FOUND}


def is_qr(req: dict[str, str]) -> bool:
    return req.get("22", "")[:2] == "03"


def payment_code(req: dict[str, str]) -> str:
    return (req.get("48") or req.get("2") or "").strip()


async def qr_sale(ctx: Context) -> None:
    key, first = claim(ctx)
    if first is not None:  # a duplicated frame of a QR sale in flight: answer what the first gets
        reply = await asyncio.shield(first)
        if reply is None:
            ctx.fail(RC.DUPLICATE)
        else:
            ctx.reply = dict(reply)
        return
    try:
        await _qr_sale(ctx)
    finally:
        release(ctx, key, dict(ctx.reply) if ctx.reply else None)


async def _qr_sale(ctx: Context) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    code = payment_code(req)
    try:
        amount = int(req.get("4", "0") or 0)
    except ValueError:
        amount = 0
    if amount <= 0:
        ctx.fail(RC.INVALID_AMOUNT)
        return
    if not code.isdigit() or not 10 <= len(code) <= 32:
        ctx.fail(RC.INVALID_CARD)
        return
    route = svc.router.lookup_qr(code)
    if route is None:
        ctx.fail(RC.NO_SUCH_ISSUER)
        return
    if not route.up:
        fill_reply(ctx, Outcome(RC.ISSUER_LINK_DOWN, route=route))
        return
    journal = svc.journal
    stan = req.get("11", "")
    if stan.isdigit() and await journal.find_by_trace(term.tid, term.mid, batch_of(req), stan, "02"):
        ctx.fail(RC.DUPLICATE)
        return
    rrn = journal.next_rrn()
    pay = h2h.qr_pay_request(payment_code=code, amount=amount, terminal_id=term.tid, merchant_id=term.mid,
                             rrn=rrn, acquirer_id=svc.acquirer_id, currency=req.get("49", "156"), stan=stan)
    txn_id = await journal.record({
        "terminal_id": term.tid, "merchant_id": term.mid, "txn_type": "sale", "mti": req["t"],
        "processing_code": req.get("3", ""), "state": "sent", "amount": amount, "currency": req.get("49", "156"),
        "stan": stan, "batch": batch_of(req), "rrn": rrn, "card_org": "CUP", "payment_method": "qr",
        "entry_mode": req.get("22", ""), "issuer": route.name,
    })
    link = route.link
    try:
        resp = await link.request(pay, timeout=svc.issuer_timeout)
    except IssuerTimeout:  # the pay itself went unanswered: the link queued its 0420 (cancel) itself
        await journal.update_state(txn_id, "reversed", response_code=RC.ISSUER_TIMEOUT)
        fill_reply(ctx, Outcome(RC.ISSUER_TIMEOUT, txn_id, rrn, route=route))
        return
    except IssuerUnavailable:
        await journal.update_state(txn_id, "declined", response_code=RC.ISSUER_UNAVAILABLE)
        fill_reply(ctx, Outcome(RC.ISSUER_UNAVAILABLE, txn_id, rrn, route=route))
        return
    pay["11"], pay["7"] = resp.get("11", pay["11"]), resp.get("7", pay["7"])  # as sent, for a cancel
    rc = resp.get("39", RC.SYSTEM_ERROR)
    order = resp.get("44", "")
    deadline = time.monotonic() + svc.qr_wait
    while rc == PENDING and time.monotonic() < deadline:
        await asyncio.sleep(min(svc.qr_poll, max(deadline - time.monotonic(), 0.0)))
        try:
            q = await link.request(h2h.qr_query_request(pay), timeout=svc.issuer_timeout)
        except (IssuerTimeout, IssuerUnavailable):
            continue  # a lost poll answer is no answer: poll again until the deadline, then cancel
        rc = _QUERY_FINAL.get(q.get("39", ""), q.get("39", RC.SYSTEM_ERROR))
        resp = {**resp, **{k: v for k, v in q.items() if k in ("38", "44")}}
    if rc == PENDING:  # the customer never confirmed: close the order upstream
        log.info("qr payment not confirmed in time, cancelling", extra=kv(tid=term.tid, rrn=rrn, wallet=route.name))
        await link.reverse(pay, "98")
        await journal.update_state(txn_id, "reversed", response_code=RC.ISSUER_TIMEOUT, qr_order_no=order)
        fill_reply(ctx, Outcome(RC.ISSUER_TIMEOUT, txn_id, rrn, route=route))
        return
    auth = resp.get("38", "")
    if rc == RC.APPROVED:
        await journal.commit_approval(txn_id, rrn=rrn, auth_code=auth, response_code=rc, qr_order_no=order,
                                      upstream_ref=f"{pay['11']}|{pay['7']}")
    else:
        await journal.update_state(txn_id, "declined", response_code=rc, qr_order_no=order)
    fill_reply(ctx, Outcome(rc, txn_id, rrn, auth, {"63": "CUP"}, route))
    ctx.reply.pop("2", None)  # field 2 held the payment code, not a PAN


async def qr_void(ctx: Context, orig: Any) -> None:
    """Void of a QR sale: cancel the order upstream (0420; the wallet refunds a paid order)."""
    from switch.flows.upstream import reverse_upstream

    req, term, journal = ctx.req, ctx.terminal, ctx.services.journal
    rrn = journal.next_rrn()
    await reverse_upstream(ctx, orig, "98")
    await journal.record({  # the void itself: credit side of the batch totals
        "terminal_id": term.tid, "merchant_id": term.mid, "txn_type": "void", "mti": req["t"],
        "processing_code": req.get("3", ""), "state": "approved", "response_code": RC.APPROVED,
        "amount": int(orig.amount), "currency": orig.currency, "stan": req.get("11", ""), "batch": batch_of(req),
        "rrn": rrn, "card_org": "CUP", "payment_method": "qr", "entry_mode": req.get("22", ""),
        "issuer": orig.issuer, "original_id": orig.id, "qr_order_no": orig.qr_order_no,
    })
    await journal.update_state(orig.id, "voided")
    reply = ctx.start_reply(RC.APPROVED)
    reply.pop("2", None)
    reply["37"] = rrn
    reply["15"] = reply["13"]
    reply["63"] = "CUP"
