"""Reversal 0400/0410: undo the terminal's last financial request.

The original is found by 41 + 42 + 11 + batch (60.2) and the MTI class of the original (01 for the
pre-auth family, 02 otherwise).  Idempotent: reversing an already reversed original answers 00
again and changes nothing.  An approved original is reversed upstream (0420 queued on the issuer
link, retried until acknowledged); a declined or unanswered one is only marked reversed.  An
unknown original gets 25, which terminals count as "reversal done" (§7).  A reversed void puts
its sale back to approved.  The switch also reverses an approval itself when the terminal's
connection is gone before the reply could be written (:func:`reverse_undelivered`).
"""

from __future__ import annotations

import logging
from typing import Any

from switch.flows.context import RC, Context
from switch.flows.upstream import batch_of, original_lock, reverse_upstream
from switch.logsafe import kv

log = logging.getLogger("switch.flows")

_PREAUTH_TYPES = frozenset({"10", "11"})


#: approved transaction types a terminal reverses when it gets no answer (§4); the switch reverses
#: them itself when their approval could not be delivered
REVERSIBLE = frozenset({"sale", "preauth", "preauth_void", "completion", "void", "completion_void"})
_VOIDS = frozenset({"void", "preauth_void", "completion_void"})


async def reverse_approved(ctx: Context, orig: Any, reason: str) -> None:
    """Undo an approved row: 0420 upstream, row ``reversed``, a reversed void's original approved again."""
    journal = ctx.services.journal
    await reverse_upstream(ctx, orig, reason)
    await journal.update_state(orig.id, "reversed")
    if orig.txn_type in _VOIDS and orig.original_id:
        await journal.update_state(orig.original_id, "approved")
    log.info("reversed", extra=kv(tid=orig.terminal_id, stan=orig.stan, rrn=orig.rrn, reason=reason))


async def reverse_undelivered(ctx: Context) -> None:
    """The approval in ``ctx.reply`` could not be written (the terminal's connection is gone):
    reverse it now instead of waiting for the terminal's 0400, which may never come."""
    rrn = ctx.reply.get("37", "")
    if ctx.reply.get("39") != RC.APPROVED or not rrn or ctx.terminal is None:
        return
    orig = await ctx.services.journal.find_by_rrn(ctx.terminal.tid, ctx.terminal.mid, rrn)
    if orig is None or orig.state != "approved" or orig.txn_type not in REVERSIBLE:
        return
    log.warning("approval not delivered, terminal gone: reversing", extra=kv(tid=orig.terminal_id, rrn=rrn))
    await reverse_approved(ctx, orig, "98")


async def reversal(ctx: Context) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    journal = svc.journal
    stan = req.get("11", "")
    if not stan.isdigit():
        ctx.fail(RC.FORMAT_ERROR)
        return
    t601 = req.get("60", "")[:2]
    mti_class = "01" if t601 in _PREAUTH_TYPES else "02"
    orig = await journal.find_by_trace(term.tid, term.mid, batch_of(req), stan, mti_class)
    if orig is None:
        await _reverse_locked(ctx, None)
        return
    async with original_lock(ctx, orig.id):  # not concurrently with a void/refund of the same row
        await _reverse_locked(ctx, await journal.get(orig.id))


async def _reverse_locked(ctx: Context, orig: Any) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    journal = svc.journal
    stan = req.get("11", "")
    reply_rc = RC.APPROVED
    if orig is None or orig.txn_type in ("balance", "reversal"):
        reply_rc = RC.ORIGINAL_NOT_FOUND
    elif orig.state == "reversed":
        pass  # idempotent
    elif orig.state in ("voided", "refunded", "settled"):
        reply_rc = RC.INVALID_TXN  # a voided or settled original cannot be reversed any more
    elif orig.state == "approved" and await journal.refunded_total(orig.id):
        # partly refunded: reversing the whole sale would credit the card more than it was debited
        log.warning("reversal of a refunded sale refused", extra=kv(tid=term.tid, stan=stan, rrn=orig.rrn))
        reply_rc = RC.INVALID_TXN
    elif orig.state == "approved":
        await reverse_approved(ctx, orig, req.get("39", "98"))
    else:  # declined, timed out (the link reversed it upstream) or still waiting for the issuer
        if orig.state in ("sent", "received"):
            svc.reversed_in_flight.add(orig.id)  # authorize() reverses it upstream if it gets approved
        await journal.update_state(orig.id, "reversed")
    reply = ctx.start_reply(reply_rc)
    reply["15"] = reply["13"]
    if orig is not None and orig.rrn:
        reply["37"] = orig.rrn
    if "38" in req:
        reply["38"] = req["38"]


FLOWS = {
    ("0400",): (reversal, "reversal", True),
}
