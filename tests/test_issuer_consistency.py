"""Property over real TCP: whatever the issuer loses or delays, once the link has drained its 0420s the
issuer's ledger equals the opening balance minus exactly the sales the switch saw approved."""

from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from issuer_sim import accounts as accounts_mod
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink, IssuerTimeout

PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"
OPEN = 1_000_000

fate = st.sampled_from(["ok", "ok", "drop", "drop_response", "late", "decline"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=50_000), fate), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=3))
def test_ledger_matches_what_the_switch_approved(txns, lost_reversals):
    async def run():
        srv = await start_issuer(accounts_mod.parse(
            {"accounts": [{"pan": PAN, "expiry": EXP, "balance": OPEN}]}))
        # the first few 0420s are lost too
        srv.faults.add(action="drop", kind="reversal", times=lost_reversals)
        for i, (_, f) in enumerate(txns):
            if f == "late":
                srv.faults.add(action="delay", delay=0.15, amount=100_000 + i, kind="sale")
            elif f != "ok":
                srv.faults.add(action=f, code="05", amount=100_000 + i, kind="sale")
        link = await IssuerLink("127.0.0.1", srv.port, timeout=0.08, reversal_retry=0.02).start(wait=2)
        try:
            async def one(i, amount):
                msg = h2h.financial_request("sale", terminal_id="T1", merchant_id="M1", rrn=f"{i:012d}",
                                            amount=100_000 + i if txns[i][1] != "ok" else amount, pan=PAN)
                try:
                    resp = await link.request(msg)
                except IssuerTimeout:
                    return 0
                return int(msg["4"]) if resp["39"] == "00" else 0
            approved = sum(await asyncio.gather(*(one(i, a) for i, (a, _) in enumerate(txns))))
            await asyncio.sleep(0.2)  # late answers land (and are dropped) before we look
            for _ in range(500):
                if await link.pending_reversals() == 0:
                    break
                await asyncio.sleep(0.02)
            assert await link.pending_reversals() == 0
            assert srv.ledger.balance(PAN) == OPEN - approved
            undone = [p.reverses for p in srv.ledger.postings(PAN) if p.kind == "reversal"]
            assert len(undone) == len(set(undone))
        finally:
            await link.close()
            await srv.close(close_ledger=True)

    asyncio.run(run())
