"""Batch settlement 0500/0510 and batch upload 0320/0330.

0500: ``switch.settlement.settle`` compares the terminal's field 48 totals (domestic half at offset
0, foreign half at 31) with the journal's totals for the same terminal and batch (60.2) and marks
the batch settled; the 0510 carries the same 48 with result digits at offsets 30 and 61 (1
balanced, 2 not balanced).  The host batch number moves on, so the next sign-on hands out batch + 1.
0320: per-record uploads and the closing 202/207 message are acknowledged with 39 = 00; the
records themselves are not re-journaled (the journal already holds every online transaction).
"""

from __future__ import annotations

from switch.flows import wire
from switch.flows.context import RC, Context
from switch.flows.upstream import batch_of
from switch.settlement import settle as host_settle


async def settle(ctx: Context) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    batch = batch_of(req)
    try:
        result = await host_settle(svc.journal, term.tid, term.mid, batch, req.get("48", ""))
    except ValueError:  # FieldFormatError included: totals not n62
        ctx.fail(RC.FORMAT_ERROR)
        return
    if int(term.batch or 0) <= batch:
        svc.registry.set_batch(term.tid, term.mid, batch + 1)
    reply = ctx.start_reply(RC.APPROVED)
    reply["15"] = reply["13"]
    reply["48"] = result.field48_reply
    reply["37"] = svc.journal.next_rrn()
    if "63" in req:
        reply["63"] = req["63"][:3]


async def batch_upload(ctx: Context) -> None:
    f60 = wire.Field60.parse(ctx.req.get("60"))
    if f60.nmi not in ("201", "202", "203", "204", "205", "206", "207"):
        ctx.fail(RC.INVALID_TXN)
        return
    reply = ctx.start_reply(RC.APPROVED)
    if "48" in ctx.req:
        reply["48"] = ctx.req["48"]


FLOWS = {
    ("0500",): (settle, "settlement", False),
    ("0320",): (batch_upload, "batch_upload", False),
}
