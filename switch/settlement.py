"""Batch settlement (0500/0510 field 48) and the merchant-facing daily report with fees.

Settlement (pos-8583-dialect.md §8): the terminal sends its batch totals in field 48 (n62: a domestic
half for 63.1 ``CUP`` and a foreign half, each debit amount/count + credit amount/count + result digit).
:func:`settle` computes the host's totals for the same batch from the journal, compares half by half,
answers with the terminal's field 48 where the result digits read ``1`` (balanced) or ``2`` (not
balanced), and marks the batch's rows ``settled``.  The journal is authoritative: a batch that does not
balance is still settled on the host's figures (the terminal then uploads its records with 0320 for
reconciliation) and both sets of totals are logged.  Repeating a 0500 gives the same answer.

Field 48 is encoded with the dialect's helpers in :mod:`_fastcore.fields`.

Daily report (§14): per merchant and business day (``[settlement] utc_offset_hours``, China time by
default): debit and credit counts and amounts, the merchant fee and the net amount to pay out.
Fee per transaction = ``fixed + amount × rate / 10 000`` rounded half up, capped when ``cap`` > 0; the
rate is chosen by payment method and card type (QR → ``qr``, debit/credit cards → ``debit``/``credit``,
card type unknown → ``other``).  Voids give their fee back (the same computation on the same amount, so
a full void nets to zero); refunds give it back only with ``refund_fee_returned = true``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from _fastcore.fields import (
    SettlementHalf,
    build_settlement_totals,
    parse_settlement_totals,
    settlement_result,
)
from switch.config import FeeProfile, FeeRate
from switch.journal import CREDIT_TYPES, DEBIT_TYPES, REVERSED, BatchTotals, Journal, SideTotals, TxnRecord
from switch.logsafe import kv

log = logging.getLogger("switch.settlement")

BALANCED = "1"
NOT_BALANCED = "2"


def _half(side: SideTotals, result: str = "0") -> SettlementHalf:
    return SettlementHalf(side.debit_amount, side.debit_count, side.credit_amount, side.credit_count, result)


def totals_to_field48(totals: BatchTotals) -> str:
    """Host totals as a 0500-style field 48 (result digits ``0``)."""
    return build_settlement_totals(_half(totals.domestic), _half(totals.foreign))


def _same(side: SideTotals, half: SettlementHalf) -> bool:
    return (side.debit_amount, side.debit_count, side.credit_amount, side.credit_count) == (
        half.debit_amount, half.debit_count, half.credit_amount, half.credit_count)


@dataclass(slots=True)
class SettlementResult:
    balanced: bool
    domestic_balanced: bool
    foreign_balanced: bool
    field48_reply: str  # the terminal's field 48 with result digits 1/2 (offsets 30 and 61)
    host_totals: BatchTotals
    terminal_totals: tuple[SettlementHalf, SettlementHalf]
    settled_rows: int


def compare(host: BatchTotals, field48: str) -> tuple[bool, bool, str]:
    """``(domestic_ok, foreign_ok, reply_field48)``; raises ``FieldFormatError`` naming field 48."""
    domestic, foreign = parse_settlement_totals(field48)
    d_ok, f_ok = _same(host.domestic, domestic), _same(host.foreign, foreign)
    reply = settlement_result(field48, BALANCED if d_ok else NOT_BALANCED, BALANCED if f_ok else NOT_BALANCED)
    return d_ok, f_ok, reply


async def settle(journal: Journal, terminal_id: str, merchant_id: str, batch: int, field48: str) -> SettlementResult:
    """Answer a 0500: compare totals, build the 0510 field 48, mark the batch settled."""
    terminal_totals = parse_settlement_totals(field48)
    host = await journal.batch_totals(terminal_id, merchant_id, batch)
    d_ok, f_ok, reply = compare(host, field48)
    rows = await journal.mark_settled(terminal_id, merchant_id, batch)
    fields = dict(terminal_id=terminal_id, merchant_id=merchant_id, batch=batch, rows=rows,
                  domestic="balanced" if d_ok else "not_balanced", foreign="balanced" if f_ok else "not_balanced")
    if d_ok and f_ok:
        log.info("batch settled", extra=kv(**fields))
    else:
        log.warning("batch settled, not balanced",
                    extra=kv(**fields, host_totals=totals_to_field48(host), terminal_totals=field48))
    return SettlementResult(d_ok and f_ok, d_ok, f_ok, reply, host, terminal_totals, rows)


# -- fees and the daily report ----------------------------------------------------------------------------

def fee_for(amount: int, rate: FeeRate) -> int:
    """``fixed + amount × rate / 10 000`` rounded half up (in fen), capped when ``cap`` > 0."""
    scaled = round(rate.rate * 10_000)  # rate in 1/10 000 of a basis point, exact integer arithmetic
    variable = (amount * scaled + 50_000_000) // 100_000_000
    fee = rate.fixed + variable
    return min(fee, rate.cap) if rate.cap > 0 else fee


def rate_for(profile: FeeProfile, rec: TxnRecord) -> FeeRate:
    if rec.payment_method == "qr":
        return profile.qr
    if rec.card_type == "debit":
        return profile.debit
    if rec.card_type == "credit":
        return profile.credit
    return profile.other


@dataclass(slots=True)
class MerchantDayReport:
    merchant_id: str
    day: dt.date
    debit_count: int = 0
    debit_amount: int = 0
    credit_count: int = 0
    credit_amount: int = 0
    fee: int = 0
    by_method: dict[str, int] = field(default_factory=dict)  # payment method -> net amount

    @property
    def gross(self) -> int:
        return self.debit_amount - self.credit_amount

    @property
    def net(self) -> int:
        return self.gross - self.fee


def business_day_bounds(day: dt.date, utc_offset_hours: float) -> tuple[float, float]:
    tz = dt.timezone(dt.timedelta(hours=utc_offset_hours))
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    return start.timestamp(), (start + dt.timedelta(days=1)).timestamp()


def build_report(
    rows: Iterable[TxnRecord], day: dt.date, fee_profiles: Mapping[str, FeeProfile],
    merchant_profiles: Mapping[str, str] | None = None,
) -> list[MerchantDayReport]:
    """Aggregate journal rows of one business day per merchant (pure function, easy to test)."""
    merchant_profiles = merchant_profiles or {}
    default = fee_profiles.get("default") or FeeProfile("default")
    out: dict[str, MerchantDayReport] = {}
    for rec in rows:
        if rec.approved_at is None or rec.state == REVERSED:
            continue
        if rec.txn_type not in DEBIT_TYPES and rec.txn_type not in CREDIT_TYPES:
            continue
        rep = out.setdefault(rec.merchant_id, MerchantDayReport(rec.merchant_id, day))
        profile = fee_profiles.get(merchant_profiles.get(rec.merchant_id, "default"), default)
        fee = fee_for(rec.amount, rate_for(profile, rec))
        method = rec.payment_method or "unknown"
        if rec.txn_type in DEBIT_TYPES:
            rep.debit_count += 1
            rep.debit_amount += rec.amount
            rep.fee += fee
            rep.by_method[method] = rep.by_method.get(method, 0) + rec.amount
        else:
            rep.credit_count += 1
            rep.credit_amount += rec.amount
            if rec.txn_type != "refund" or profile.refund_fee_returned:
                rep.fee -= fee
            rep.by_method[method] = rep.by_method.get(method, 0) - rec.amount
    return [out[k] for k in sorted(out)]


async def daily_report(
    journal: Journal, day: dt.date, fee_profiles: Mapping[str, FeeProfile],
    merchant_profiles: Mapping[str, str] | None = None, utc_offset_hours: float = 8.0,
    merchant_id: str | None = None,
) -> list[MerchantDayReport]:
    start, end = business_day_bounds(day, utc_offset_hours)
    rows = await journal.rows_between(start, end, merchant_id)
    return build_report(rows, day, fee_profiles, merchant_profiles)


REPORT_COLUMNS = ("day", "merchant_id", "debit_count", "debit_amount", "credit_count", "credit_amount",
                  "gross", "fee", "net")


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def format_report(reports: Iterable[MerchantDayReport], fmt: str = "text") -> str:
    """``text`` (amounts in yuan, aligned) or ``csv`` (amounts in fen, for machines)."""
    reports = list(reports)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(REPORT_COLUMNS)
        for r in reports:
            w.writerow([r.day.isoformat(), r.merchant_id, r.debit_count, r.debit_amount, r.credit_count,
                        r.credit_amount, r.gross, r.fee, r.net])
        return buf.getvalue()
    lines = [f"{'merchant':<15} {'debits':>6} {'debit CNY':>12} {'credits':>7} {'credit CNY':>12} "
             f"{'gross CNY':>12} {'fee CNY':>10} {'net CNY':>12}"]
    for r in reports:
        lines.append(f"{r.merchant_id:<15} {r.debit_count:>6} {_yuan(r.debit_amount):>12} {r.credit_count:>7} "
                     f"{_yuan(r.credit_amount):>12} {_yuan(r.gross):>12} {_yuan(r.fee):>10} {_yuan(r.net):>12}")
    if not reports:
        lines.append("(no transactions)")
    return "\n".join(lines) + "\n"
