"""Batch settlement 0500/0510 and batch upload 0320/0330.

0500: the terminal's field 48 totals (domestic half at offset 0, foreign half at 31) are compared
with the journal's totals for the same terminal and batch (60.2); the 0510 carries the same 48
with result digits at offsets 30 and 61 (1 balanced, 2 not balanced).  A balanced batch is marked
settled.  Either way the host batch number moves on, so the next sign-on hands out batch + 1.
0320: per-record uploads and the closing 202/207 message are acknowledged with 39 = 00; the
records themselves are not re-journaled (the journal already holds every online transaction).
"""

from __future__ import annotations

import logging
from typing import Any

from switch.flows import wire
from switch.flows.context import RC, Context
from switch.flows.upstream import batch_of
from switch.logsafe import kv

log = logging.getLogger("switch.flows")


def _side_matches(host: Any, term: tuple[int, int, int, int]) -> bool:
    return (host.debit_amount, host.debit_count, host.credit_amount, host.credit_count) == term


async def compare_totals(journal: Any, tid: str, mid: str, batch: int, f48: str) -> tuple[bool, bool]:
    """(domestic balanced, foreign balanced) for the terminal's field 48 against the journal."""
    dom, foreign = wire.settlement_totals_48(f48)
    totals = await journal.batch_totals(tid, mid, batch)
    return _side_matches(totals.domestic, dom), _side_matches(totals.foreign, foreign)


async def settle(ctx: Context) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    f48 = req.get("48", "")
    batch = batch_of(req)
    try:
        dom_ok, foreign_ok = await compare_totals(svc.journal, term.tid, term.mid, batch, f48)
    except ValueError:
        ctx.fail(RC.FORMAT_ERROR)
        return
    balanced = dom_ok and foreign_ok
    if balanced:
        await svc.journal.mark_settled(term.tid, term.mid, batch)
    if int(term.batch or 0) <= batch:
        svc.registry.set_batch(term.tid, term.mid, batch + 1)
    reply = ctx.start_reply(RC.APPROVED)
    reply["15"] = reply["13"]
    reply["48"] = wire.settlement_reply_48(f48, dom_ok, foreign_ok)
    reply["37"] = svc.journal.next_rrn()
    if "63" in req:
        reply["63"] = req["63"][:3]
    log.info("settlement", extra=kv(tid=term.tid, mid=term.mid, batch=batch, balanced=balanced))


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
