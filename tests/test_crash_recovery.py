"""kill -9 of the switch under load: the restart reverses what was in flight, nothing is lost or doubled.

``posswitch hsm``, ``posswitch issuer`` and ``posswitch serve`` run as real processes (started like
bench/bench_switch.py does, with its config writer; journal ``synchronous = FULL`` and ``NORMAL``:
WAL commits survive a killed process either way).  A fault proxy
in this test process sits between the switch and the issuer and holds every 0210 for a while, so
at any moment several sales are approved (debited) at the issuer but not yet answered.  Several
terminals send pipelined PIN sales; once enough approvals have reached the terminals and more
debits stand at the issuer than approvals were received, the switch gets SIGKILL.  The proxy
faults are removed and the switch restarted on the same journal.  Then:

* no journal row is left in flight, the reversal queue drains;
* ``posswitch reconcile``'s logic (switch.reconcile.run) finds zero differences;
* no (terminal, RRN) carries more than one standing debit, and the account balance equals the
  opening balance minus the journal's approved sales;
* every approval a terminal received is approved in the journal and debited in the ledger;
* the terminals send a 0400 for each sale the kill left unanswered (as real terminals do); then a
  debit stands at the issuer for exactly the approvals the terminals saw, and every unanswered
  sale is reversed or declined in the journal;
* the restarted switch carries on: new sales are approved.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from benchmods import load as load_bench

from switch import reconcile, testbed
from switch.sim_terminal import SimCard, SimTerminal, SimTerminalError
from switch.testing.faultproxy import FaultProxy, h2h_mti

pytestmark = pytest.mark.timeout(150)
TERMINALS = 4
PIPELINE = 3  # sales in flight per terminal
HOLD_MS = 700  # how long the proxy holds each issuer answer


bench_switch = load_bench("bench_switch")
loadgen = load_bench("loadgen")


def _query(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(str(db), timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _standing_debits(ledger: Path) -> int:
    return int(_query(ledger, "SELECT COUNT(*) FROM postings WHERE kind = 'debit' AND reversed_by IS NULL")[0][0])


async def _eventually(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Load:
    """Terminals selling in a loop; keeps every approval a terminal received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, str, int]] = []  # (tid, rrn, amount) of 00 replies
        self.unanswered: list[tuple[int, dict[str, str]]] = []  # (terminal index, request) cut off by the kill
        self.stop = False
        self.errors = 0

    async def terminal(self, i: int) -> None:
        term = SimTerminal("127.0.0.1", self.port, loadgen.terminal_id(i), loadgen.MERCHANT_ID,
                           testbed.test_tmk(i), timeout=30.0)
        await term.connect()
        try:
            assert (await term.sign_on()).approved
            card = SimCard(pan=bench_switch.PAN, pin=bench_switch.PIN)

            async def worker(k: int) -> None:
                n = 0
                while not self.stop:
                    n += 1
                    amount = 100 + i * 1000 + k * 100 + n  # distinct per sale, traceable
                    doc = term._base("0200", "000000", "22")  # what SimTerminal.sale sends, kept for a 0400
                    doc.update({"4": f"{amount:012d}", "25": "00", "49": "156"})
                    term._card_fields(doc, card, "swipe", card.pin, amount)
                    try:
                        reply = await term.send(doc, mac=True)
                    except (SimTerminalError, ConnectionError, OSError, TimeoutError):
                        self.errors += 1
                        self.unanswered.append((i, doc))
                        return  # the switch died: this terminal's connection is gone
                    if reply.approved:
                        self.received.append((term.tid.strip(), reply.rrn, amount))

            await asyncio.gather(*(worker(k) for k in range(PIPELINE)))
        finally:
            await term.close()


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])  # the default, and the bench's setting
async def test_kill_9_under_load_then_restart_loses_and_doubles_nothing(tmp_path, synchronous):
    wd = tmp_path
    ports = {name: bench_switch.free_port() for name in ("hsm", "issuer", "switch", "metrics")}
    cli = [sys.executable, "-m", "switch.cli"]
    procs: list = []
    proxy = FaultProxy("127.0.0.1", ports["issuer"])
    ledger, journal = wd / "ledger.db", wd / "switch.db"
    try:
        hsm = bench_switch.Proc("hsm", [*cli, "hsm", "--listen", f"127.0.0.1:{ports['hsm']}",
                                        "--log-level", "WARNING"], wd)
        procs.append(hsm)
        await asyncio.to_thread(hsm.wait_line, "hsm listening")
        issuer = bench_switch.Proc("issuer", [
            *cli, "issuer", "--listen", f"127.0.0.1:{ports['issuer']}", "--accounts",
            str(bench_switch.write_accounts(wd)), "--hsm", f"127.0.0.1:{ports['hsm']}",
            "--ledger", str(ledger), "--log-level", "WARNING"], wd)
        procs.append(issuer)
        await asyncio.to_thread(issuer.wait_line, "issuer listening")
        await proxy.start()
        cfg = bench_switch.write_switch_config(wd, {**ports, "issuer": proxy.port}, TERMINALS, synchronous,
                                               issuer_timeout=20.0)
        held = proxy.down.delay(HOLD_MS, count=None, match=h2h_mti("0210"))
        switch = bench_switch.Proc("switch", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(switch)
        await asyncio.to_thread(switch.wait_port, ports["switch"])
        opening = int(_query(ledger, "SELECT balance FROM accounts")[0][0])

        load = Load(ports["switch"])
        tasks = [asyncio.ensure_future(load.terminal(i)) for i in range(TERMINALS)]
        # enough answered approvals, and approvals at the issuer that no terminal has seen yet
        await _eventually(lambda: len(load.received) >= 2 * TERMINALS, 60, "approvals at the terminals")
        await _eventually(lambda: _standing_debits(ledger) >= len(load.received) + 2, 30,
                          "issuer approvals still unanswered")
        switch.p.kill()  # SIGKILL: no drain, no shutdown hooks
        await asyncio.to_thread(switch.p.wait, 10)
        load.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 40)
        assert held.hits > 0 and load.errors > 0  # some sales really were cut off by the kill
        last_id_at_kill = _query(journal, "SELECT MAX(id) FROM txn")[0][0]
        in_flight_at_kill = _query(journal, "SELECT COUNT(*) FROM txn WHERE state IN ('sent', 'received')")[0][0]
        assert in_flight_at_kill > 0
        unanswered_debits = _standing_debits(ledger) - len(load.received)
        assert unanswered_debits > 0

        proxy.down.clear()
        switch2 = bench_switch.Proc("switch2", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(switch2)
        await asyncio.to_thread(switch2.wait_port, ports["switch"])
        await _eventually(lambda: _query(journal, "SELECT COUNT(*) FROM txn WHERE state IN ('sent', 'received')"
                                         )[0][0] == 0, 20, "recovery of the in-flight rows")
        await _eventually(lambda: _query(journal, "SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL"
                                         )[0][0] == 0, 30, "the reversal queue to drain")

        # the terminals reverse (0400) every sale the kill left unanswered, as a real terminal does
        assert load.unanswered
        for i in sorted({i for i, _ in load.unanswered}):
            term = SimTerminal("127.0.0.1", ports["switch"], loadgen.terminal_id(i), loadgen.MERCHANT_ID,
                               testbed.test_tmk(i), timeout=30.0)
            await term.connect()
            try:
                assert (await term.sign_on()).approved
                for _, doc in (u for u in load.unanswered if u[0] == i):
                    rev = await term.reversal(doc)
                    assert rev.rc in ("00", "25"), (doc["11"], rev.rc)  # 25: never reached the journal
            finally:
                await term.close()
        await _eventually(lambda: _query(journal, "SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL"
                                         )[0][0] == 0, 30, "the terminals' reversals to be delivered")

        # the restarted switch carries on
        after = Load(ports["switch"])
        after_task = asyncio.ensure_future(after.terminal(0))
        await _eventually(lambda: len(after.received) >= 3, 30, "sales after the restart")
        after.stop = True
        await asyncio.wait_for(after_task, 40)
        assert after.errors == 0

        day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
        res = await asyncio.to_thread(reconcile.run, str(journal), str(ledger), day)
        assert res.clean, reconcile.format_result(res)
        doubles = _query(ledger, "SELECT terminal_id, rrn, COUNT(*) AS n FROM postings WHERE kind = 'debit' "
                                 "AND reversed_by IS NULL GROUP BY terminal_id, rrn HAVING n > 1")
        assert not doubles, [tuple(r) for r in doubles]
        approved = _query(journal, "SELECT terminal_id, rrn, amount FROM txn WHERE state = 'approved' "
                                   "AND txn_type = 'sale'")
        balance = int(_query(ledger, "SELECT balance FROM accounts")[0][0])
        assert balance == opening - sum(int(r["amount"]) for r in approved)
        journal_ok = {(r["terminal_id"].strip(), r["rrn"]): int(r["amount"]) for r in approved}
        debited = {(r["terminal_id"].strip(), r["rrn"]): -int(r["amount"]) for r in _query(
            ledger, "SELECT terminal_id, rrn, amount FROM postings WHERE kind = 'debit' AND reversed_by IS NULL")}
        for tid, rrn, amount in load.received + after.received:  # no lost approval
            assert journal_ok.get((tid, rrn)) == amount, (tid, rrn, amount)
            assert abs(debited.get((tid, rrn), 0)) == amount, (tid, rrn, amount)
        # a debit stands exactly for each approval a terminal saw: nothing lost, nothing doubled
        assert _standing_debits(ledger) == len(load.received) + len(after.received)
        for i, doc in load.unanswered:
            rows = _query(journal, "SELECT state, rrn FROM txn WHERE terminal_id = ? AND stan = ? "
                          "AND txn_type = 'sale' AND id <= ?", (loadgen.terminal_id(i), doc["11"], last_id_at_kill))
            assert all(r["state"] in ("reversed", "declined") for r in rows), [tuple(r) for r in rows]
        reversed_rows = _query(journal, "SELECT COUNT(*) FROM txn WHERE state = 'reversed' AND response_code = '98'")
        assert reversed_rows[0][0] >= in_flight_at_kill
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proc.stop)
        await proxy.stop()


async def _reverse_unanswered(port: int, unanswered: list[tuple[int, dict[str, str]]]) -> None:
    """What terminals do after reconnecting: a 0400 for each request that got no answer."""
    for i in sorted({i for i, _ in unanswered}):
        term = SimTerminal("127.0.0.1", port, loadgen.terminal_id(i), loadgen.MERCHANT_ID,
                           testbed.test_tmk(i), timeout=30.0)
        await term.connect()
        try:
            assert (await term.sign_on()).approved
            for _, doc in (u for u in unanswered if u[0] == i):
                rev = await term.reversal(doc)
                assert rev.rc in ("00", "25"), (doc["11"], rev.rc)
        finally:
            await term.close()


async def test_repeated_kills_while_reversals_are_pending_converge(tmp_path):
    """Three kill -9 cycles under load, each restart killed again before its reversals (and the
    recovery's second pass) are through, with the 0430s swallowed meanwhile; the last restart,
    without faults, must still converge to the same end state: nothing lost, nothing doubled."""
    wd = tmp_path
    ports = {name: bench_switch.free_port() for name in ("hsm", "issuer", "switch", "metrics")}
    cli = [sys.executable, "-m", "switch.cli"]
    procs: list = []
    proxy = FaultProxy("127.0.0.1", ports["issuer"])
    ledger, journal = wd / "ledger.db", wd / "switch.db"
    try:
        hsm = bench_switch.Proc("hsm", [*cli, "hsm", "--listen", f"127.0.0.1:{ports['hsm']}",
                                        "--log-level", "WARNING"], wd)
        procs.append(hsm)
        await asyncio.to_thread(hsm.wait_line, "hsm listening")
        issuer = bench_switch.Proc("issuer", [
            *cli, "issuer", "--listen", f"127.0.0.1:{ports['issuer']}", "--accounts",
            str(bench_switch.write_accounts(wd)), "--hsm", f"127.0.0.1:{ports['hsm']}",
            "--ledger", str(ledger), "--log-level", "WARNING"], wd)
        procs.append(issuer)
        await asyncio.to_thread(issuer.wait_line, "issuer listening")
        await proxy.start()
        cfg = bench_switch.write_switch_config(wd, {**ports, "issuer": proxy.port}, TERMINALS, "FULL",
                                               issuer_timeout=20.0)
        proxy.down.delay(HOLD_MS, count=None, match=h2h_mti("0210"))
        acks_lost = proxy.down.drop(count=None, match=h2h_mti("0430"))  # reversals stay pending
        opening = int(_query(ledger, "SELECT balance FROM accounts")[0][0])
        received: list[tuple[str, str, int]] = []
        unanswered: list[tuple[int, dict[str, str]]] = []
        for cycle in range(3):
            switch = bench_switch.Proc(f"switch{cycle}", [*cli, "serve", "--config", str(cfg)], wd)
            procs.append(switch)
            await asyncio.to_thread(switch.wait_port, ports["switch"])
            load = Load(ports["switch"])
            tasks = [asyncio.ensure_future(load.terminal(i)) for i in range(TERMINALS)]
            await _eventually(lambda load=load: len(load.received) >= TERMINALS, 60, "approvals at the terminals")
            earlier = len(received)
            await _eventually(lambda load=load, earlier=earlier: _standing_debits(ledger) >= earlier + len(
                load.received) + 1, 30, "issuer approvals still unanswered")
            switch.p.kill()
            await asyncio.to_thread(switch.p.wait, 10)
            load.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 40)
            received += load.received
            unanswered += load.unanswered
        assert acks_lost.hits > 0  # reversals of earlier cycles were in the queue when a later one was killed
        assert _query(journal, "SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL")[0][0] > 0

        proxy.down.clear()
        final = bench_switch.Proc("final", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(final)
        await asyncio.to_thread(final.wait_port, ports["switch"])
        await _reverse_unanswered(ports["switch"], unanswered)
        await _eventually(lambda: _query(journal, "SELECT COUNT(*) FROM txn WHERE state IN ('sent', 'received')"
                                         )[0][0] == 0, 20, "recovery of the in-flight rows")
        await _eventually(lambda: _query(journal, "SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL"
                                         )[0][0] == 0, 30, "the reversal queue to drain")
        day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
        res = await asyncio.to_thread(reconcile.run, str(journal), str(ledger), day)
        assert res.clean, reconcile.format_result(res)
        assert _standing_debits(ledger) == len(received)
        approved = _query(journal, "SELECT amount FROM txn WHERE state = 'approved' AND txn_type = 'sale'")
        assert int(_query(ledger, "SELECT balance FROM accounts")[0][0]) == opening - sum(
            int(r["amount"]) for r in approved)
        assert sorted(int(r["amount"]) for r in approved) == sorted(a for _, _, a in received)
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proc.stop)
        await proxy.stop()
