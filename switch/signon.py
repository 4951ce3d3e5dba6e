"""Network management: sign-on 0800/0810, sign-off and echo test 0820/0830.

Sign-on asks the HSM for fresh PIN, MAC (and track) keys for the terminal, exports them under
the terminal's TMK and returns them in field 62 in the 001 / 003 / 004 layouts of
pos-8583-dialect.md §9.1 with their check values.  The keys under the LMK go to the terminal
registry; the reply carries the host batch number in 60.2 and the host date and time.
"""

from __future__ import annotations

import logging

from switch.flows.context import RC, Context
from switch.flows.wire import Field60
from switch.logsafe import kv

log = logging.getLogger("switch.signon")

#: 60.3 network management codes
SIGN_ON_MODES = ("001", "003", "004")
SIGN_OFF = "002"
ECHO = "301"


async def sign_on(ctx: Context) -> None:
    req, term, svc = ctx.req, ctx.terminal, ctx.services
    f60 = Field60.parse(req.get("60"))
    mode = f60.nmi
    if mode not in SIGN_ON_MODES:
        ctx.fail(RC.INVALID_TXN)
        return
    keys = await svc.security.working_keys(term, mode)
    svc.registry.refresh_if_changed()  # pick up CLI changes (status, key rotation) now and then
    svc.registry.set_working_keys(
        term.tid, term.mid, keys.pik.under_lmk, keys.mak.under_lmk, keys.tdk.under_lmk if keys.tdk else None
    )
    batch = f"{int(term.batch or svc.batch_seed):06d}"
    reply = ctx.start_reply(RC.APPROVED)
    reply["60"] = f"00{batch}{mode}"
    reply["62"] = keys.field62.hex().upper()  # §9.1 layout for this 60.3
    reply["37"] = svc.journal.next_rrn()
    if "63" in req:
        reply["63"] = req["63"][:3]
    log.info("sign-on", extra=kv(tid=term.tid, mid=term.mid, mode=mode, batch=batch))


async def sign_off_or_echo(ctx: Context) -> None:
    f60 = Field60.parse(ctx.req.get("60"))
    if f60.nmi == SIGN_OFF:
        ctx.services.registry.sign_off(ctx.terminal.tid, ctx.terminal.mid)
        ctx.start_reply(RC.APPROVED)
        log.info("sign-off", extra=kv(tid=ctx.terminal.tid, mid=ctx.terminal.mid))
    elif f60.nmi == ECHO:
        ctx.start_reply(RC.APPROVED)
    else:
        ctx.fail(RC.INVALID_TXN)


#: dispatch table contribution: key -> (flow, txn type, MACed)
FLOWS = {
    ("0800",): (sign_on, "sign_on", False),
    ("0820",): (sign_off_or_echo, "network", False),
}
