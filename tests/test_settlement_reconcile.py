"""``posswitch reconcile``: journal vs the real issuer_sim ledger after real traffic over loopback."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from pathlib import Path

import pytest

from issuer_sim import accounts as accounts_mod
from issuer_sim.server import start_issuer
from switch import cli, h2h
from switch.issuer_link import IssuerLink
from switch.journal import Journal
from switch.reconcile import (
    AMOUNT_MISMATCH,
    IN_FLIGHT_IN_JOURNAL,
    MISSING_AT_ISSUER,
    NOT_REVERSED_AT_ISSUER,
    UNKNOWN_TO_JOURNAL,
    JournalSide,
    reconcile,
)

PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"
TID, MID = "00000001", "898310048140001"
#: the issuer dates postings with its local date: use the same day boundary on the journal side
OFFSET = time.localtime().tm_gmtoff / 3600


class Traffic:
    def __init__(self, journal: Journal, link: IssuerLink) -> None:
        self.j, self.link = journal, link

    async def run(self, kind: str, amount: int, *, journal: str = "approve", issuer: bool = True,
                  journal_amount: int | None = None) -> str:
        rrn = self.j.next_rrn()
        if journal != "none":
            txn = await self.j.record(dict(terminal_id=TID, merchant_id=MID, txn_type=kind, state="sent",
                                           amount=journal_amount if journal_amount is not None else amount,
                                           rrn=rrn, issuer="cup", pan=PAN, card_org="CUP"))
        rc = "00"
        if issuer:
            msg = h2h.financial_request(kind, terminal_id=TID, merchant_id=MID, rrn=rrn, amount=amount, pan=PAN,
                                        expiry=EXP)
            rc = (await self.link.request(msg))["39"]
        if journal == "approve" and rc == "00":
            await self.j.commit_approval(txn, rrn, "000001")
        elif journal == "reversed":
            await self.j.update_state(txn, "reversed", response_code="98")
        return rrn


async def make_traffic(tmp_path: Path, dirty: bool) -> tuple[str, str, dict[str, str]]:
    jpath, lpath = str(tmp_path / "journal.db"), str(tmp_path / "ledger.db")
    issuer = await start_issuer(accounts_mod.parse({"accounts": [{"pan": PAN, "expiry": EXP, "balance": 10**7}]}),
                                ledger=lpath)
    j = await Journal.open(jpath, b"k" * 32)
    link = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=5).start(wait=5)
    t = Traffic(j, link)
    rrns: dict[str, str] = {}
    try:
        rrns["sale"] = await t.run("sale", 1000)
        rrns["sale2"] = await t.run("sale", 2000)
        rrns["void"] = await t.run("void", 2000)
        rrns["refund"] = await t.run("refund", 500)
        rrns["preauth"] = await t.run("preauth", 3000)  # a hold: no money moved on either side
        rrns["declined"] = await t.run("sale", 10**8)  # 51 at the issuer, declined in the journal
        if dirty:
            rrns["crash"] = await t.run("sale", 700, journal="sent")  # switch died before journaling
            rrns["timeout"] = await t.run("sale", 800, journal="reversed")  # 0420 never got through
            rrns["issuer_only"] = await t.run("sale", 900, journal="none")
            rrns["journal_only"] = await t.run("sale", 600, issuer=False)
            rrns["mismatch"] = await t.run("sale", 1400, journal_amount=1500)
    finally:
        await link.close()
        await j.close()
        await issuer.close(close_ledger=True)
    return jpath, lpath, rrns


def today() -> str:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=OFFSET))).date().isoformat()


async def test_clean_day_reconciles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jpath, lpath, _ = await make_traffic(tmp_path, dirty=False)
    code = cli.main(["reconcile", "--journal", jpath, "--ledger", lpath, "--date", today()])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 differences" in out and "journal -5.00 CNY, issuer -5.00 CNY" in out  # -10 -20 +20 +5


async def test_every_kind_of_difference_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jpath, lpath, rrns = await make_traffic(tmp_path, dirty=True)
    code = cli.main(["reconcile", "--journal", jpath, "--ledger", lpath, "--date", today(), "--format", "csv"])
    out = capsys.readouterr().out
    assert code == 1
    found = {row["rrn"]: row for row in csv.DictReader(io.StringIO(out))}
    assert {r: found[r]["kind"] for r in found} == {
        rrns["crash"]: IN_FLIGHT_IN_JOURNAL,
        rrns["timeout"]: NOT_REVERSED_AT_ISSUER,
        rrns["issuer_only"]: UNKNOWN_TO_JOURNAL,
        rrns["journal_only"]: MISSING_AT_ISSUER,
        rrns["mismatch"]: AMOUNT_MISMATCH,
    }
    assert (found[rrns["mismatch"]]["journal_amount"], found[rrns["mismatch"]]["issuer_amount"]) == ("-1500",
                                                                                                      "-1400")
    assert found[rrns["issuer_only"]]["issuer_amount"] == "-900"
    # another business day sees none of it
    code = cli.main(["reconcile", "--journal", jpath, "--ledger", lpath, "--date", "2001-01-01"])
    assert code == 0 and "0 journal rows, 0 issuer RRNs" in capsys.readouterr().out


def test_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["reconcile", "--journal", str(tmp_path / "nope.db"), "--ledger", str(tmp_path / "x.db")])
    assert code == 2 and "journal: " in capsys.readouterr().err
    (tmp_path / "empty.db").write_bytes(b"")
    code = cli.main(["reconcile", "--journal", str(tmp_path / "empty.db"), "--ledger", str(tmp_path / "empty.db"),
                     "--date", "2026-11-22"])
    assert code == 2 and "is not a posswitch journal" in capsys.readouterr().err
    code = cli.main(["reconcile", "--ledger", "x"])
    assert code == 2 and "--journal" in capsys.readouterr().err


def test_pure_matching_rules() -> None:
    day = dt.date(2026, 11, 22)
    rows = [JournalSide(TID, "1", "sale", "voided", 100, -100), JournalSide(TID, "2", "void", "approved", 100, 100),
            JournalSide(TID, "3", "sale", "declined", 100, 0), JournalSide(TID, "4", "balance", "approved", 0, 0)]
    res = reconcile(rows, {(TID, "1"): -100, (TID, "2"): 100, (TID, "5"): 0}, day)
    assert res.clean and res.matched == 4 and res.journal_total == 0
