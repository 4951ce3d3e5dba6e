"""A switch process killed with a reversal pending delivers it after a restart (separate processes).

``posswitch hsm``, ``posswitch issuer`` and ``posswitch serve`` run as real processes (started the
way bench/bench_switch.py starts them, with its config writer); a fault proxy in this test process
sits between the switch and the issuer.  The issuer approves a sale, then the proxy cuts the link
instead of passing the answer on, so the switch answers 98 and queues a 0420; the proxy also swallows every 0420/0421, so the reversal
stays pending in the journal's durable reversal store while the issuer still holds the debit.  Then the switch is killed with SIGKILL (no
shutdown), the faults are removed and the switch is started again on the same journal: the 0420 is
delivered, the issuer ledger is restored and the journal shows the sale reversed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from benchmods import load as load_bench

from issuer_sim.accounts import account_id_for
from switch import testbed
from switch.sim_terminal import SimCard, SimTerminal
from switch.testing.faultproxy import FaultProxy, h2h_mti

pytestmark = pytest.mark.timeout(90)


bench_switch = load_bench("bench_switch")
loadgen = load_bench("loadgen")


def ledger_balance(db: Path, pan: str) -> int:
    conn = sqlite3.connect(str(db))
    try:
        return int(conn.execute("SELECT balance FROM accounts WHERE account_id = ?",
                                (account_id_for(pan),)).fetchone()[0])
    finally:
        conn.close()


def journal_row(db: Path, tid: str, stan: str) -> tuple[str, int]:
    """(state of the sale row, reversals not yet acknowledged by the issuer)."""
    conn = sqlite3.connect(str(db))
    try:
        state = conn.execute("SELECT state FROM txn WHERE terminal_id = ? AND stan = ?", (tid, stan)).fetchone()
        queued = conn.execute("SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL").fetchone()[0]
        return (state[0] if state else ""), int(queued)
    finally:
        conn.close()


async def eventually(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_pending_reversal_survives_a_killed_switch(tmp_path):
    wd = tmp_path
    ports = {name: bench_switch.free_port() for name in ("hsm", "issuer", "switch", "metrics")}
    cli = [sys.executable, "-m", "switch.cli"]
    procs: list = []
    proxy = FaultProxy("127.0.0.1", ports["issuer"])
    try:
        hsm = bench_switch.Proc("hsm", [*cli, "hsm", "--listen", f"127.0.0.1:{ports['hsm']}",
                                        "--log-level", "WARNING"], wd)
        procs.append(hsm)
        await asyncio.to_thread(hsm.wait_line, "hsm listening")
        issuer = bench_switch.Proc("issuer", [
            *cli, "issuer", "--listen", f"127.0.0.1:{ports['issuer']}", "--accounts",
            str(bench_switch.write_accounts(wd)), "--hsm", f"127.0.0.1:{ports['hsm']}",
            "--ledger", str(wd / "ledger.db"), "--log-level", "WARNING"], wd)
        procs.append(issuer)
        await asyncio.to_thread(issuer.wait_line, "issuer listening")
        await proxy.start()
        cfg = bench_switch.write_switch_config(wd, {**ports, "issuer": proxy.port}, 1, "FULL", issuer_timeout=1.0)
        # the issuer approves and debits; its 0210 cuts the link instead of arriving: the switch answers
        # 98 at once and queues a 0420 (a merely dropped 0210 would cost serve's fixed 10 s wait)
        lost_answer = proxy.down.cut(match=h2h_mti("0210"))
        lost_reversals = proxy.up.drop(count=None, match=h2h_mti("0420", "0421"))  # never reach the issuer

        switch = bench_switch.Proc("switch", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(switch)
        await asyncio.to_thread(switch.wait_port, ports["switch"])
        before = ledger_balance(wd / "ledger.db", bench_switch.PAN)

        tid = loadgen.terminal_id(0)
        term = SimTerminal("127.0.0.1", ports["switch"], tid, loadgen.MERCHANT_ID, testbed.test_tmk(0), timeout=10.0)
        await term.connect()
        assert (await term.sign_on()).approved
        card = SimCard(pan=bench_switch.PAN, pin=bench_switch.PIN)
        reply = await term.sale(card, 4242, pin=card.pin)
        await term.close()
        assert reply.rc == "98" and lost_answer.hits == 1
        # the issuer did debit; the switch keeps trying to reverse, every 0420/0421 is swallowed
        await eventually(lambda: lost_reversals.hits >= 1, 10, "a 0420 attempt")
        assert ledger_balance(wd / "ledger.db", bench_switch.PAN) == before - 4242
        state, queued = journal_row(wd / "switch.db", tid, reply.request["11"])
        assert state == "reversed" and queued == 1

        switch.p.kill()  # SIGKILL: no drain, no shutdown hooks
        await asyncio.to_thread(switch.p.wait, 10)
        proxy.up.clear()
        proxy.down.clear()
        switch2 = bench_switch.Proc("switch2", [*cli, "serve", "--config", str(cfg)], wd)
        procs.append(switch2)
        await asyncio.to_thread(switch2.wait_port, ports["switch"])

        await eventually(lambda: ledger_balance(wd / "ledger.db", bench_switch.PAN) == before, 20,
                         "the reversal delivered after the restart")
        await eventually(lambda: journal_row(wd / "switch.db", tid, reply.request["11"]) == ("reversed", 0), 10,
                         "the reversal queue to drain")
    finally:
        for proc in reversed(procs):
            await asyncio.to_thread(proc.stop)
        await proxy.stop()
