"""``posswitch issuer`` as a real process: listens, answers over TCP, stops on SIGTERM; bad files exit 2."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import sys

from switch import h2h
from switch.issuer_link import IssuerLink

PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"


async def test_issuer_process_serves_and_stops(tmp_path):
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"accounts": [{"pan": PAN, "expiry": EXP, "balance": 5000}],
                                    "wallet_users": [{"code_prefix": "1345", "balance": 300}]}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "issuer_sim", "--listen", "127.0.0.1:0", "--accounts", str(accounts),
        "--wallet-listen", "127.0.0.1:0", "--ledger", str(tmp_path / "l.db"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("issuer listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("wallets listening on 127.0.0.1:")
        wallet = await IssuerLink("127.0.0.1", int(line.rsplit(":", 1)[1]), timeout=5).start(wait=5)
        try:
            qr = h2h.qr_pay_request(payment_code="134500000000000001", amount=301, terminal_id="T1",
                                    merchant_id="M1", rrn="000000000009")
            assert (await wallet.request(qr))["39"] == "51"
            qr = h2h.qr_pay_request(payment_code="134500000000000002", amount=300, terminal_id="T1",
                                    merchant_id="M1", rrn="000000000010")
            assert (await wallet.request(qr))["39"] == "00"
        finally:
            await wallet.close()
        link = await IssuerLink("127.0.0.1", port, timeout=5).start(wait=5)
        try:
            msg = h2h.financial_request("sale", terminal_id="T1", merchant_id="M1", rrn="000000000001",
                                        amount=6000, pan=PAN)
            assert (await link.request(msg))["39"] == "51"
            msg = h2h.financial_request("sale", terminal_id="T1", merchant_id="M1", rrn="000000000002",
                                        amount=4000, pan=PAN)
            assert (await link.request(msg))["39"] == "00"
        finally:
            await link.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        err = (await proc.stderr.read()).decode()
        assert "approved" in err and PAN not in err and "621234******1234" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_accounts_file_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\npan = "12"\nexpiry = "3012"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "issuer_sim", "--accounts", str(bad), "--listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"accounts[0].pan" in err
