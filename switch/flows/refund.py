"""Advices: refund (0220/200000, 60.1 = 25), pre-auth completion advice (0220/000000, 60.1 = 24)
and the script result advice (0620, acknowledged).

A refund names its original sale or completion by RRN (37) and may be partial and repeated; the
total of approved refunds never exceeds the original amount (an over-refund gets 61).  Unknown
original → 25; a voided or reversed original → 12; zero amount → 13.
"""

from __future__ import annotations

from typing import Any

from switch.flows import wire
from switch.flows.context import RC, Context
from switch.flows.financial import find_original
from switch.flows.upstream import authorize, fill_reply, original_lock

_REFUNDABLE_STATES = frozenset({"approved", "settled", "refunded"})


async def refund(ctx: Context) -> None:
    req, journal = ctx.req, ctx.services.journal
    try:
        amount = int(req.get("4", "0") or 0)
    except ValueError:
        amount = 0
    if amount <= 0:
        ctx.fail(RC.INVALID_AMOUNT)
        return
    orig = None
    rrn = req.get("37", "").strip()
    if rrn and rrn.strip("0"):
        orig = await journal.find_by_rrn(ctx.terminal.tid, ctx.terminal.mid, rrn)
    if orig is None:
        orig = await find_original(ctx)
    if orig is None or orig.txn_type not in ("sale", "completion", "completion_advice"):
        ctx.fail(RC.ORIGINAL_NOT_FOUND)
        return
    async with original_lock(ctx, orig.id):  # concurrent refunds of one sale see each other
        await _refund_locked(ctx, await journal.get(orig.id), amount)


async def _refund_locked(ctx: Context, orig: Any, amount: int) -> None:
    req, journal = ctx.req, ctx.services.journal
    if orig.payment_method == "qr":  # QR orders are cancelled by a void (same batch), not refunded here
        ctx.fail(RC.INVALID_TXN)
        return
    if orig.state not in _REFUNDABLE_STATES:
        ctx.fail(RC.INVALID_TXN)
        return
    pan = wire.pan_of(req)
    if pan and journal.pan_hash(pan) != orig.pan_hash:
        ctx.fail(RC.INVALID_CARD)
        return
    already = await journal.refunded_total(orig.id)
    if already + amount > int(orig.amount):
        ctx.fail(RC.OVER_LIMIT)
        return
    out = await authorize(ctx, "refund", original=orig)
    if out.rc == RC.APPROVED and already + amount == int(orig.amount) and orig.state == "approved":
        await journal.update_state(orig.id, "refunded")
    fill_reply(ctx, out)


async def completion_advice(ctx: Context) -> None:
    from switch.flows.financial import completion

    await completion(ctx)
    ctx.txn_type = "completion_advice"


async def script_advice(ctx: Context) -> None:
    """0620 script result advice (60.3 951): acknowledged; the result (DF31 in 55) is not forwarded."""
    reply = ctx.start_reply(RC.APPROVED)
    reply.pop("2", None)


FLOWS = {
    ("0620",): (script_advice, "script_advice", True),
    ("0220", "20", "25"): (refund, "refund", True),
    ("0220", "00", "24"): (completion_advice, "completion_advice", True),
}
