"""``posswitch reconcile``: compare the switch's journal with an issuer's ledger, RRN by RRN.

Every upstream request carries a fresh RRN (field 37) from the journal, and the issuer's ledger
(``issuer_sim.ledger``, table ``postings``) records each movement with that RRN and the terminal id, so
the two sides match on (terminal id, RRN).  For each RRN we compare the **money moved**:

* journal side: an approved, not reversed row moves ``−amount`` for the debit family (sale, completion,
  completion advice, offline sale, adjust) and ``+amount`` for the credit family (void, refund,
  completion void); pre-auth holds, balance enquiries, declined and reversed rows move nothing;
* ledger side: the sum of ``debit``/``credit`` postings plus the ``reversal`` postings that undo them
  (holds and releases are not money moved and are ignored).

Differences are classified:

``missing_at_issuer``
    the journal approved something the issuer has no posting for;
``unknown_to_journal``
    the issuer moved money under an RRN the journal does not know;
``not_reversed_at_issuer``
    the journal reversed (or declined) it but the issuer still shows money moved, e.g. a 0420 still
    waiting in the reversal queue;
``in_flight_in_journal``
    the journal never recorded an outcome (``received``/``sent``, e.g. a crash between the issuer's
    answer and the journal write) but the issuer moved money;
``amount_mismatch``
    both sides know the RRN but the amounts differ.

Scope: journal rows created on the business day (``[settlement] utc_offset_hours``) and ledger postings
of that business date or with an RRN of those rows.  Exit status: 0 clean, 1 differences, 2 error.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from switch.config import ConfigError, add_config_arguments, config_from_args
from switch.journal import CREDIT_TYPES, DEBIT_TYPES, DECLINED, RECEIVED, REVERSED, SENT
from switch.settlement import business_day_bounds

MISSING_AT_ISSUER = "missing_at_issuer"
UNKNOWN_TO_JOURNAL = "unknown_to_journal"
NOT_REVERSED_AT_ISSUER = "not_reversed_at_issuer"
AMOUNT_MISMATCH = "amount_mismatch"
IN_FLIGHT_IN_JOURNAL = "in_flight_in_journal"


class ReconcileError(Exception):
    """A side cannot be read (missing file, not a journal / ledger)."""


@dataclass(slots=True)
class JournalSide:
    terminal_id: str
    rrn: str
    txn_type: str
    state: str
    amount: int
    expected: int  # money moved as the journal sees it (negative = debited from the card)


@dataclass(slots=True)
class Difference:
    kind: str
    terminal_id: str
    rrn: str
    journal_amount: int  # expected movement per the journal
    issuer_amount: int  # movement per the ledger
    detail: str = ""


@dataclass(slots=True)
class ReconcileResult:
    day: dt.date
    matched: int = 0
    journal_rows: int = 0
    ledger_rrns: int = 0
    journal_total: int = 0
    issuer_total: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences


def expected_movement(txn_type: str, state: str, amount: int, approved: bool) -> int:
    if not approved or state in (REVERSED, DECLINED, RECEIVED, SENT):
        return 0
    if txn_type in DEBIT_TYPES:
        return -amount
    if txn_type in CREDIT_TYPES:
        return amount
    return 0


def _open_ro(path: str, what: str) -> sqlite3.Connection:
    if not Path(path).exists():
        raise ReconcileError(f"{what}: {path} does not exist")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def read_journal(path: str, start: float, end: float, issuer: str | None = None) -> list[JournalSide]:
    conn = _open_ro(path, "journal")
    try:
        sql = ("SELECT terminal_id, rrn, txn_type, state, amount, approved_at FROM txn "
               "WHERE created_at >= ? AND created_at < ? AND rrn != ''")
        params: list[object] = [start, end]
        if issuer:
            sql += " AND issuer = ?"
            params.append(issuer)
        rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    except sqlite3.OperationalError as exc:
        raise ReconcileError(f"journal: {path} is not a posswitch journal ({exc})") from exc
    finally:
        conn.close()
    return [JournalSide(r["terminal_id"], r["rrn"], r["txn_type"], r["state"], int(r["amount"]),
                        expected_movement(r["txn_type"], r["state"], int(r["amount"]), r["approved_at"] is not None))
            for r in rows]


def read_ledger(path: str, day: dt.date, rrns: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Money moved per (terminal id, RRN): debit/credit postings and the reversals that undo them."""
    conn = _open_ro(path, "ledger")
    wanted = set(rrns)
    try:
        rows = conn.execute(
            "SELECT p.terminal_id, p.rrn, p.kind, p.amount, p.business_date, o.kind AS reversed_kind "
            "FROM postings p LEFT JOIN postings o ON o.id = p.reverses ORDER BY p.id").fetchall()
    except sqlite3.OperationalError as exc:
        raise ReconcileError(f"ledger: {path} is not an issuer ledger ({exc})") from exc
    finally:
        conn.close()
    moved: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        key = (r["terminal_id"].strip(), r["rrn"])
        if r["business_date"] != day.isoformat() and key not in wanted:
            continue
        money = r["kind"] in ("debit", "credit") or (
            r["kind"] == "reversal" and r["reversed_kind"] in ("debit", "credit"))
        moved[key] += int(r["amount"]) if money else 0
    return dict(moved)


def reconcile(journal_rows: list[JournalSide], ledger: dict[tuple[str, str], int], day: dt.date) -> ReconcileResult:
    res = ReconcileResult(day=day, journal_rows=len(journal_rows), ledger_rrns=len(ledger))
    expected: dict[tuple[str, str], int] = defaultdict(int)
    undone: set[tuple[str, str]] = set()
    unfinished: set[tuple[str, str]] = set()
    for row in journal_rows:
        key = (row.terminal_id.strip(), row.rrn)
        expected[key] += row.expected
        if row.state in (REVERSED, DECLINED):
            undone.add(key)
        elif row.state in (RECEIVED, SENT):
            unfinished.add(key)
    for key in sorted(set(expected) | set(ledger)):
        want, got = expected.get(key, 0), ledger.get(key)
        res.journal_total += want
        res.issuer_total += got or 0
        if key not in expected:
            if got:
                res.differences.append(Difference(UNKNOWN_TO_JOURNAL, *key, 0, got))
            continue
        if got is None:
            if want:
                res.differences.append(Difference(MISSING_AT_ISSUER, *key, want, 0))
            else:
                res.matched += 1
            continue
        if want == got:
            res.matched += 1
        elif want == 0 and key in undone:
            res.differences.append(Difference(NOT_REVERSED_AT_ISSUER, *key, 0, got, "reversal pending?"))
        elif want == 0 and key in unfinished:
            res.differences.append(Difference(IN_FLIGHT_IN_JOURNAL, *key, 0, got, "no outcome journaled"))
        else:
            res.differences.append(Difference(AMOUNT_MISMATCH, *key, want, got))
    return res


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def format_result(res: ReconcileResult, fmt: str = "text") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("day", "kind", "terminal_id", "rrn", "journal_amount", "issuer_amount", "detail"))
        for d in res.differences:
            w.writerow((res.day.isoformat(), d.kind, d.terminal_id, d.rrn, d.journal_amount, d.issuer_amount,
                        d.detail))
        return buf.getvalue()
    lines = [f"reconciliation {res.day.isoformat()}: {res.journal_rows} journal rows, {res.ledger_rrns} issuer "
             f"RRNs, {res.matched} matched, {len(res.differences)} differences",
             f"money moved: journal {_yuan(res.journal_total)} CNY, issuer {_yuan(res.issuer_total)} CNY"]
    for d in res.differences:
        lines.append(f"  {d.kind:<23} terminal {d.terminal_id:<8} rrn {d.rrn} journal {_yuan(d.journal_amount):>10} "
                     f"issuer {_yuan(d.issuer_amount):>10} {d.detail}".rstrip())
    return "\n".join(lines) + "\n"


def run(journal_path: str, ledger_path: str, day: dt.date, utc_offset_hours: float = 8.0,
        issuer: str | None = None) -> ReconcileResult:
    start, end = business_day_bounds(day, utc_offset_hours)
    rows = read_journal(journal_path, start, end, issuer)
    ledger = read_ledger(ledger_path, day, ((r.terminal_id.strip(), r.rrn) for r in rows))
    return reconcile(rows, ledger, day)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="posswitch reconcile", description="compare the journal with an issuer ledger")
    add_config_arguments(p)
    p.add_argument("--journal", help="journal database (default: [journal] path of --config)")
    p.add_argument("--ledger", required=True, help="the issuer's ledger database (issuer_sim --ledger)")
    p.add_argument("--issuer", help="only journal rows routed to this issuer")
    p.add_argument("--date", help="business day YYYY-MM-DD (default: today)")
    p.add_argument("--format", choices=("text", "csv"), default="text")
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args) if args.config else None
        journal_path = args.journal or (cfg.journal.path if cfg else None)
        if not journal_path:
            raise ConfigError("", "--journal", "give --journal PATH or --config FILE")
        offset = cfg.settlement.utc_offset_hours if cfg else 8.0
        tz = dt.timezone(dt.timedelta(hours=offset))
        day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(tz).date()
        res = run(journal_path, args.ledger, day, offset, args.issuer)
    except (ConfigError, ReconcileError, ValueError) as exc:
        print(f"posswitch reconcile: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_result(res, args.format))
    return 0 if res.clean else 1
