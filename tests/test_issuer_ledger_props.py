"""Property: whatever sequence of sales, refunds, retransmissions and (repeated) reversals the issuer
sees, the ledger balance equals opening + credits - debits of the non-reversed approvals, a sale is
approved exactly when the balance covers it, and each original is reversed at most once. (Reversing a
refund is a forced debit and may overdraw the account, as at a real issuer.)"""

from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_sim import accounts as accounts_mod
from issuer_sim.host import IssuerHost
from issuer_sim.ledger import Ledger
from switch import h2h

PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"
OPEN = 10_000

ops = st.lists(st.one_of(
    st.tuples(st.just("sale"), st.integers(min_value=1, max_value=6_000)),
    st.tuples(st.just("refund"), st.integers(min_value=1, max_value=3_000)),
    st.tuples(st.just("reverse"), st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("resend"), st.integers(min_value=0, max_value=30)),
), max_size=25)


@settings(max_examples=60)
@given(ops)
def test_ledger_balance_invariant(sequence):
    async def run():
        cfg = accounts_mod.parse({"accounts": [{"pan": PAN, "expiry": EXP, "balance": OPEN}]})
        host = IssuerHost(cfg, Ledger())
        sent: list[tuple[dict[str, str], dict[str, str]]] = []
        reversed_: set[int] = set()
        for i, (op, n) in enumerate(sequence):
            if op in ("sale", "refund"):
                msg = h2h.financial_request(op, terminal_id="T1", merchant_id="M1", rrn=f"{i:012d}",
                                            amount=n, pan=PAN, stan=f"{i + 1:06d}")
                before = host.ledger.balance(PAN)
                resp = await host.process(dict(msg))
                sent.append((msg, resp))
                if op == "sale":  # the funds check: approved iff covered by the balance
                    assert (resp["39"] == "00") == (n <= before), (n, before, resp["39"])
            elif sent and op == "resend":
                msg, first = sent[n % len(sent)]
                again = await host.process(dict(msg))
                assert again["39"] == first["39"] and again.get("38") == first.get("38")
            elif sent and op == "reverse":
                j = n % len(sent)
                msg, _ = sent[j]
                rev = h2h.reversal_for(msg, "98", stan=f"{900000 + i:06d}")
                assert (await host.process(rev))["39"] in ("00", "25")
                reversed_.add(j)
        expected = OPEN
        for j, (msg, resp) in enumerate(sent):
            if resp["39"] == "00" and j not in reversed_:
                expected += int(msg["4"]) * (1 if msg["3"] == "200000" else -1)
        assert host.ledger.balance(PAN) == expected
        undone = [p.reverses for p in host.ledger.postings(PAN) if p.kind == "reversal"]
        assert len(undone) == len(set(undone))
        host.ledger.close()

    asyncio.run(run())
