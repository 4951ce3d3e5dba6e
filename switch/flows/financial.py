"""Online financial flows: balance inquiry, sale, pre-authorization and completion, voids.

Sale and pre-auth accept magstripe (35/36), chip (55) and contactless (22 = 07x, 60.4 = 6), with
or without PIN (52, translated TPK → ZPK).  A void (sale void 23, pre-auth void 11, completion void
21) must name an approved original of the same terminal and batch (RRN in 37 and/or 61 = batch +
trace), for the full original amount: not found → 25, wrong amount → 64, other batch, already
voided/reversed or (partly) refunded → 12.
"""

from __future__ import annotations

from typing import Any

from switch.flows import qr, wire
from switch.flows.context import RC, Context
from switch.flows.upstream import Outcome, authorize, batch_of, fill_reply, original_lock

_REQUIRES_AMOUNT = frozenset({"sale", "preauth", "completion"})


def _amount(req: dict[str, str]) -> int:
    try:
        return int(req.get("4", "0") or 0)
    except ValueError:
        return -1


async def _online(ctx: Context, txn_type: str) -> None:
    if txn_type in _REQUIRES_AMOUNT and _amount(ctx.req) <= 0:
        ctx.fail(RC.INVALID_AMOUNT)
        return
    out = await authorize(ctx, txn_type, defer_commit=True)  # the dispatcher awaits the commit before replying
    fill_reply(ctx, out)


async def balance(ctx: Context) -> None:
    await _online(ctx, "balance")


async def sale(ctx: Context) -> None:
    if qr.is_qr(ctx.req):
        await qr.qr_sale(ctx)
        return
    await _online(ctx, "sale")


async def preauth(ctx: Context) -> None:
    await _online(ctx, "preauth")


async def find_original(ctx: Context) -> Any:
    """The original named by 61 (batch + trace) and/or 37 (RRN) on this terminal, or None."""
    req, term, journal = ctx.req, ctx.terminal, ctx.services.journal
    f61 = wire.Field61.parse(req.get("61"))
    orig = None
    if f61 is not None and f61.orig_trace.strip("0"):
        orig = await journal.find_by_trace(term.tid, term.mid, int(f61.orig_batch), f61.orig_trace)
    rrn = req.get("37", "").strip()
    if orig is None and rrn and rrn.strip("0"):
        orig = await journal.find_by_rrn(term.tid, term.mid, rrn)
    if orig is not None and rrn and rrn.strip("0") and orig.rrn != rrn:
        return None  # 37 and 61 disagree
    return orig


async def _void(ctx: Context, txn_type: str, original_types: tuple[str, ...]) -> None:
    orig = await find_original(ctx)
    if orig is None or orig.txn_type not in original_types:
        ctx.fail(RC.ORIGINAL_NOT_FOUND)
        return
    async with original_lock(ctx, orig.id):  # one operation at a time on one original
        await _void_locked(ctx, txn_type, await ctx.services.journal.get(orig.id))


async def _void_locked(ctx: Context, txn_type: str, orig: Any) -> None:
    req = ctx.req
    if orig.state != "approved":
        ctx.fail(RC.INVALID_TXN)
        return
    if int(orig.batch) != batch_of(req):
        ctx.fail(RC.INVALID_TXN)
        return
    if await ctx.services.journal.refunded_total(orig.id):  # partly refunded: a full void would over-credit
        ctx.fail(RC.INVALID_TXN)
        return
    if _amount(req) != int(orig.amount):
        ctx.fail(RC.AMOUNT_MISMATCH)
        return
    if orig.payment_method == "qr":
        await qr.qr_void(ctx, orig)
        return
    out: Outcome = await authorize(ctx, txn_type, original=orig)
    if out.rc == RC.APPROVED:
        await ctx.services.journal.update_state(orig.id, "voided")
    fill_reply(ctx, out)


async def void(ctx: Context) -> None:
    await _void(ctx, "void", ("sale",))


async def preauth_void(ctx: Context) -> None:
    await _void(ctx, "preauth_void", ("preauth",))


async def completion_void(ctx: Context) -> None:
    await _void(ctx, "completion_void", ("completion", "completion_advice"))


async def completion(ctx: Context) -> None:
    """Pre-auth completion: original pre-auth by 61 (+ auth code 38); amount ≤ pre-authorized amount; once."""
    orig = await find_original(ctx)
    if orig is None or orig.txn_type != "preauth":
        ctx.fail(RC.ORIGINAL_NOT_FOUND)
        return
    async with original_lock(ctx, orig.id):
        await _completion_locked(ctx, await ctx.services.journal.get(orig.id))


async def _completion_locked(ctx: Context, orig: Any) -> None:
    req = ctx.req
    if orig.state != "approved":
        ctx.fail(RC.INVALID_TXN)
        return
    amount = _amount(req)
    if amount <= 0:
        ctx.fail(RC.INVALID_AMOUNT)
        return
    if amount > int(orig.amount):
        ctx.fail(RC.AMOUNT_MISMATCH)
        return
    # one completion per pre-auth (online or advice; a voided completion still counts): a second one would
    # charge the card again
    if await ctx.services.journal.child_total(orig.id, ("completion", "completion_advice")):
        ctx.fail(RC.INVALID_TXN)
        return
    out = await authorize(ctx, "completion", original=orig)
    fill_reply(ctx, out)


#: dispatch table contribution: (MTI, processing code[:2], 60.1) -> (flow, txn type, MACed)
FLOWS = {
    ("0200", "31", "01"): (balance, "balance", True),
    ("0200", "00", "22"): (sale, "sale", True),
    ("0200", "20", "23"): (void, "void", True),
    ("0100", "03", "10"): (preauth, "preauth", True),
    ("0100", "20", "11"): (preauth_void, "preauth_void", True),
    ("0200", "00", "20"): (completion, "completion", True),
    ("0200", "20", "21"): (completion_void, "completion_void", True),
}
