"""Model-based test: random sequences of journal operations agree with a plain Python model."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from switch.journal import CREDIT_TYPES, DEBIT_TYPES, Journal

TID, MID = "00000001", "898310048140001"


class JournalMachine(RuleBasedStateMachine):
    """Each rule does the same thing to the real journal (SQLite file) and to a list of dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.j = self.loop.run_until_complete(Journal.open(str(Path(self.tmp.name) / "m.db"), b"k" * 32,
                                                           synchronous="OFF"))
        self.rows: dict[int, dict] = {}

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @initialize()
    def start(self) -> None:
        pass

    @rule(kind=st.sampled_from(["sale", "sale", "completion", "preauth", "balance"]),
          amount=st.integers(1, 10**6), org=st.sampled_from(["CUP", "VIS"]), batch=st.sampled_from([1, 2]),
          outcome=st.sampled_from(["approved", "approved", "received", "declined"]))
    def new_txn(self, kind: str, amount: int, org: str, batch: int, outcome: str) -> None:
        txn = self.run(self.j.record(dict(terminal_id=TID, merchant_id=MID, txn_type=kind, amount=amount,
                                          card_org=org, batch=batch, stan=len(self.rows) + 1)))
        self.rows[txn] = dict(type=kind, amount=amount, org=org, batch=batch, state="received", approved=False,
                              original=None)
        if outcome == "approved":
            self.run(self.j.commit_approval(txn, self.j.next_rrn(), "000001"))
            self.rows[txn].update(state="approved", approved=True)
        elif outcome == "declined":
            self.run(self.j.update_state(txn, "declined", response_code="05"))
            self.rows[txn]["state"] = "declined"

    def _pick(self, data, **want):
        ids = [i for i, r in self.rows.items() if all(r[k] == v for k, v in want.items())]
        return data.draw(st.sampled_from(ids)) if ids else None

    @rule(data=st.data(), approve=st.booleans())
    def answer(self, data, approve: bool) -> None:
        txn = self._pick(data, state="received")
        if txn is None:
            return
        if approve:
            self.run(self.j.commit_approval(txn, self.j.next_rrn(), "000001"))
            self.rows[txn].update(state="approved", approved=True)
        else:
            self.run(self.j.update_state(txn, "declined", response_code="51"))
            self.rows[txn]["state"] = "declined"

    @rule(data=st.data(), kind=st.sampled_from(["void", "refund"]), part=st.integers(1, 100))
    def credit(self, data, kind: str, part: int) -> None:
        orig = self._pick(data, state="approved", type="sale")
        if orig is None:
            return
        o = self.rows[orig]
        amount = o["amount"] if kind == "void" else max(1, o["amount"] * part // 100)
        txn = self.run(self.j.record(dict(terminal_id=TID, merchant_id=MID, txn_type=kind, amount=amount,
                                          card_org=o["org"], batch=o["batch"], original_id=orig, stan=1)))
        self.run(self.j.commit_approval(txn, self.j.next_rrn(), "000002"))
        self.rows[txn] = dict(type=kind, amount=amount, org=o["org"], batch=o["batch"], state="approved",
                              approved=True, original=orig)
        if kind == "void":
            self.run(self.j.update_state(orig, "voided"))
            o["state"] = "voided"

    @rule(data=st.data())
    def reverse(self, data) -> None:
        txn = self._pick(data, state="approved")
        if txn is None:
            return
        self.run(self.j.update_state(txn, "reversed"))
        self.rows[txn]["state"] = "reversed"

    @precondition(lambda self: bool(self.rows))
    @rule(batch=st.sampled_from([1, 2]))
    def settle(self, batch: int) -> None:
        n = self.run(self.j.mark_settled(TID, MID, batch))
        want = [r for r in self.rows.values() if r["batch"] == batch and r["state"] in ("approved", "voided",
                "refunded") and (r["type"] in DEBIT_TYPES or r["type"] in CREDIT_TYPES)]
        assert n == len(want)
        for r in want:
            r["state"] = "settled"

    @invariant()
    def totals_agree(self) -> None:
        for batch in (1, 2):
            got = self.run(self.j.batch_totals(TID, MID, batch))
            for side, domestic in ((got.domestic, True), (got.foreign, False)):
                rows = [r for r in self.rows.values() if r["batch"] == batch and (r["org"] == "CUP") == domestic
                        and r["approved"] and r["state"] != "reversed"]
                deb = [r["amount"] for r in rows if r["type"] in DEBIT_TYPES]
                cre = [r["amount"] for r in rows if r["type"] in CREDIT_TYPES]
                assert (side.debit_amount, side.debit_count) == (sum(deb), len(deb))
                assert (side.credit_amount, side.credit_count) == (sum(cre), len(cre))

    @invariant()
    def refunds_and_in_flight_agree(self) -> None:
        for orig in [i for i, r in self.rows.items() if r["type"] == "sale"][:5]:
            want = sum(r["amount"] for r in self.rows.values() if r["original"] == orig and r["type"] == "refund"
                       and r["state"] != "reversed")
            assert self.run(self.j.refunded_total(orig)) == want
        got = [r.id for r in self.run(self.j.in_flight())]
        assert got == sorted(i for i, r in self.rows.items() if r["state"] == "received")

    def teardown(self) -> None:
        self.run(self.j.close())
        self.loop.close()
        self.tmp.cleanup()


JournalMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestJournalModel = JournalMachine.TestCase
