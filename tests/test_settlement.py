"""Settlement: field 48 compare/reply per §8, rows marked settled, fees and the daily report."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore.fields import (
    FieldFormatError,
    SettlementHalf,
    build_settlement_totals,
    parse_settlement_totals,
)
from switch.config import FeeProfile, FeeRate
from switch.journal import Journal, TxnRecord
from switch.settlement import (
    build_report,
    business_day_bounds,
    daily_report,
    fee_for,
    format_report,
    settle,
    totals_to_field48,
)

TID, MID = "00000001", "898310048140001"


@pytest.fixture
async def journal(tmp_path: Path):
    j = await Journal.open(str(tmp_path / "s.db"), b"k" * 32)
    yield j
    await j.close()


async def approve(j: Journal, **kw) -> int:
    base = dict(terminal_id=TID, merchant_id=MID, txn_type="sale", amount=0, batch=3, card_org="CUP",
                payment_method="chip", stan=1)
    base.update(kw)
    txn_id = await j.record(base)
    await j.commit_approval(txn_id, j.next_rrn(), "000001")
    return txn_id


def f48(d: tuple[int, int, int, int], f: tuple[int, int, int, int]) -> str:
    return build_settlement_totals(SettlementHalf(*d), SettlementHalf(*f))


async def test_balanced_batch(journal: Journal) -> None:
    s = await approve(journal, amount=10_000)
    await approve(journal, amount=2_500, txn_type="void", original_id=s)
    await journal.update_state(s, "voided")
    await approve(journal, amount=7_000, card_org="VIS", txn_type="completion")
    await approve(journal, amount=99, batch=4)  # another batch stays open
    request = f48((10_000, 1, 2_500, 1), (7_000, 1, 0, 0))
    assert totals_to_field48(await journal.batch_totals(TID, MID, 3)) == request
    res = await settle(journal, TID, MID, 3, request)
    assert res.balanced and res.settled_rows == 3
    assert res.field48_reply[30] == "1" and res.field48_reply[61] == "1"
    assert res.field48_reply[:30] == request[:30] and res.field48_reply[31:61] == request[31:61]
    assert (await journal.get(s)).state == "settled"
    assert (await journal.batch_totals(TID, MID, 4)).domestic.debit_count == 1
    again = await settle(journal, TID, MID, 3, request)  # a repeated 0500 gets the same answer
    assert again.balanced and again.field48_reply == res.field48_reply and again.settled_rows == 0


async def test_not_balanced_half_by_half(journal: Journal) -> None:
    await approve(journal, amount=500)
    await approve(journal, amount=800, card_org="MCC")
    res = await settle(journal, TID, MID, 3, f48((500, 1, 0, 0), (900, 1, 0, 0)))
    assert not res.balanced and res.domestic_balanced and not res.foreign_balanced
    assert res.field48_reply[30] == "1" and res.field48_reply[61] == "2"
    assert res.terminal_totals[1].debit_amount == 900
    assert (await journal.batch_totals(TID, MID, 3)).foreign.debit_amount == 800
    res = await settle(journal, TID, MID, 3, f48((500, 2, 0, 0), (800, 1, 0, 0)))  # count differs
    assert res.field48_reply[30] == "2" and res.field48_reply[61] == "1"


async def test_bad_field48_names_field_and_offset(journal: Journal) -> None:
    with pytest.raises(FieldFormatError, match="field 48: settlement totals must be 62 digits"):
        await settle(journal, TID, MID, 3, "0" * 61)
    with pytest.raises(FieldFormatError, match="field 48: non-digit 'x' at offset 5"):
        await settle(journal, TID, MID, 3, "00000x" + "0" * 56)


@given(st.lists(st.integers(0, 10**12 - 1), min_size=2, max_size=2), st.lists(st.integers(0, 999), min_size=2,
                                                                               max_size=2))
def test_field48_round_trip(amounts: list[int], counts: list[int]) -> None:
    value = f48((amounts[0], counts[0], amounts[1], counts[1]), (amounts[1], counts[1], amounts[0], counts[0]))
    d, f = parse_settlement_totals(value)
    assert len(value) == 62 and (d.debit_amount, d.credit_count, f.debit_amount) == (amounts[0], counts[1],
                                                                                        amounts[1])


def test_fee_rules() -> None:
    assert fee_for(500, FeeRate(38)) == 2  # §14 data point: rate 38 on 500 fen -> fee 2, settle 498
    assert fee_for(131, FeeRate(38)) == 0 and fee_for(132, FeeRate(38)) == 1  # 0.4978 / 0.5016
    assert fee_for(1_000_000, FeeRate(38, 0, 2000)) == 2000  # capped at 20 CNY
    assert fee_for(100_000, FeeRate(60, 10)) == 610
    assert fee_for(12_345, FeeRate(0.5)) == 1  # fractional rates are exact (0.61725 -> 1)


def rec(**kw) -> TxnRecord:
    base = dict(terminal_id=TID, merchant_id=MID, txn_type="sale", state="approved", amount=10_000,
                payment_method="chip", card_type="debit", approved_at=1.0)
    base.update(kw)
    return TxnRecord(**base)


def test_report_fees_voids_refunds_and_profiles() -> None:
    profiles = {"default": FeeProfile("default"),
                "generous": FeeProfile("generous", qr=FeeRate(20), refund_fee_returned=True)}
    other = "898310048140002"
    rows = [
        rec(amount=10_000),  # debit 38 -> 38
        rec(amount=10_000, txn_type="void", state="approved"),  # void gives 38 back
        rec(amount=20_000, card_type="credit"),  # 60 -> 120
        rec(amount=5_000, card_type="credit", txn_type="refund"),  # fee kept (default profile)
        rec(amount=3_000, card_type=""),  # unknown card type -> other 60 -> 18
        rec(amount=9_999, state="reversed"),  # ignored
        rec(amount=9_999, state="declined", approved_at=None),  # ignored
        rec(amount=9_999, txn_type="balance"),  # ignored
        rec(merchant_id=other, amount=10_000, payment_method="qr"),  # 20 -> 20
        rec(merchant_id=other, amount=4_000, payment_method="qr", txn_type="refund"),  # returned: -8
    ]
    day = dt.date(2026, 11, 22)
    a, b = build_report(rows, day, profiles, {other: "generous"})
    assert (a.merchant_id, a.debit_count, a.debit_amount, a.credit_count, a.credit_amount) == (MID, 3, 33_000, 2,
                                                                                              15_000)
    assert a.fee == 38 - 38 + 120 + 18 and a.gross == 18_000 and a.net == 18_000 - 138
    assert (b.debit_amount, b.credit_amount, b.fee, b.net) == (10_000, 4_000, 12, 6_000 - 12)
    assert b.by_method == {"qr": 6_000}
    text = format_report([a, b])
    assert "180.00" in text and "1.38" in text and "178.62" in text
    csv_text = format_report([a, b], "csv").splitlines()
    assert csv_text[0].startswith("day,merchant_id") and csv_text[1] == (
        f"2026-11-22,{MID},3,33000,2,15000,18000,138,17862")


async def test_daily_report_uses_the_business_day(journal: Journal) -> None:
    day = dt.date.fromtimestamp(time.time())
    start, end = business_day_bounds(day, 8.0)
    assert end - start == 86_400
    inside = await approve(journal, amount=1_000, card_type="debit")
    r = await journal.get(inside)
    day_of_row = dt.datetime.fromtimestamp(r.created_at, dt.timezone(dt.timedelta(hours=8))).date()
    reports = await daily_report(journal, day_of_row, {"default": FeeProfile("default")})
    assert [(x.merchant_id, x.debit_amount, x.fee) for x in reports] == [(MID, 1_000, 4)]
    assert await daily_report(journal, day_of_row - dt.timedelta(days=1), {}) == []


@given(amount=st.integers(0, 10**12), rate=st.decimals(min_value=0, max_value=1000, places=2),
       fixed=st.integers(0, 500), cap=st.integers(0, 10**6))
def test_fee_matches_decimal_half_up(amount: int, rate, fixed: int, cap: int) -> None:
    from decimal import ROUND_HALF_UP, Decimal

    variable = (Decimal(amount) * rate / Decimal(10_000)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    want = fixed + int(variable)
    if cap:
        want = min(want, cap)
    assert fee_for(amount, FeeRate(float(rate), fixed, cap)) == want
