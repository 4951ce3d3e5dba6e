"""What the journal's two durable writes per sale cost, in the journal's shape and in a log's.

Both sides make a sale's two records (the "sent" row, then its approval) durable with one fsync per
group of ``k`` sales, single-threaded, CPU time per sale (``os.times``):

* ``sqlite``: what the switch does now, on the real schema (``JOURNAL_MIGRATIONS``): each commit holds
  the INSERTs of ``k`` new sales and the approval UPDATEs of the previous ``k``, run by
  ``_fastcore.sqlbatch`` with ``synchronous = FULL`` (one fsync per commit), passive checkpoints every
  50 commits from a second connection.
* ``log``: an append-only file of the same records (``marshal`` of the row's values, and of the
  approval's fields, each behind a 4-byte length), one ``write`` + ``fdatasync`` per group.  The
  SQLite tables would still have to be filled from it, in large batches, off the sale's path; that
  part is not measured here.

``k`` stands for how many sales share a commit: a few at half load, tens at full load (see
docs/benchmarks.md).  Run: ``.venv/bin/python bench/journal_shapes.py [--sales N] [--k 2 4 8 20 60]``.
"""

from __future__ import annotations

import argparse
import marshal
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _fastcore.sqlbatch import BatchConnection  # noqa: E402
from switch.journal import COLUMNS  # noqa: E402
from switch.journal_sqlite import _INSERT_SQL, JOURNAL_MIGRATIONS, connect, migrate  # noqa: E402

_APPROVE = "UPDATE txn SET state=?, auth_code=?, response_code=?, updated_at=?, approved_at=? WHERE id=?"


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _row(i: int) -> tuple[Any, ...]:
    now = time.time()
    values = dict(terminal_id=f"{i % 8:08d}", merchant_id="898310048140001", txn_type="sale", state="sent",
                  amount=1234, currency="156", mti="0200", processing_code="000000",
                  pan_masked="621234******0001", pan_hash=os.urandom(32).hex(), stan=f"{i % 999999:06d}", batch=1,
                  rrn=f"6340{i:08d}", auth_code="", response_code="", card_org="CUP", card_type="",
                  payment_method="swipe", entry_mode="021", issuer="cup", original_id=None, qr_order_no="",
                  upstream_ref="", created_at=now, updated_at=now, approved_at=None, settled_at=None)
    return tuple(values[c] for c in COLUMNS)


def sqlite_per_sale(workdir: str, sales: int, k: int) -> float:
    path = os.path.join(workdir, "journal.db")
    conn = connect(path, "FULL")
    migrate(conn, "journal", JOURNAL_MIGRATIONS)
    conn.close()
    batch = BatchConnection(path, synchronous="FULL", pragmas=("wal_autocheckpoint=0",))
    checkpoints = sqlite3.connect(path, isolation_level=None)
    rows = [_row(i) for i in range(sales)]
    pending: list[int] = []
    c0 = _cpu()
    for n, start in enumerate(range(0, sales, k)):
        new = rows[start:start + k]
        now = time.time()
        results = batch.run([_INSERT_SQL] * len(new) + [_APPROVE] * len(pending),
                            [*new, *(("approved", "000001", "00", now, now, i) for i in pending)])
        pending = [rowid for rowid, _ in results[:len(new)]]
        if n % 50 == 49:
            checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)")
    spent = _cpu() - c0
    batch.close()
    checkpoints.close()
    return spent * 1e6 / sales


def log_per_sale(workdir: str, sales: int, k: int) -> float:
    fd = os.open(os.path.join(workdir, "journal.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rows = [_row(i) for i in range(sales)]
    rrn = COLUMNS.index("rrn")
    c0 = _cpu()
    for start in range(0, sales, k):
        buf = bytearray()
        for row in rows[start:start + k]:
            for record in (marshal.dumps(row), marshal.dumps(("approved", "000001", "00", time.time(), row[rrn]))):
                buf += len(record).to_bytes(4, "little")
                buf += record
        os.write(fd, buf)
        os.fdatasync(fd)
    spent = _cpu() - c0
    os.close(fd)
    return spent * 1e6 / sales


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sales", type=int, default=6000)
    p.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 20, 60], help="sales per commit")
    p.add_argument("--runs", type=int, default=2, help="alternating runs of each side")
    p.add_argument("--dir", default=None, help="where the files go (default: a temporary folder)")
    args = p.parse_args(argv)
    print("| sales per commit | sqlite µs/sale | log µs/sale |")
    print("|---|---|---|")
    for k in args.k:
        got: dict[str, list[float]] = {"sqlite": [], "log": []}
        for _ in range(args.runs):
            for name, fn in (("sqlite", sqlite_per_sale), ("log", log_per_sale)):
                with tempfile.TemporaryDirectory(dir=args.dir) as d:
                    got[name].append(fn(d, args.sales, k))
        print(f"| {k} | {' / '.join(f'{x:.0f}' for x in got['sqlite'])} | {' / '.join(f'{x:.0f}' for x in got['log'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
