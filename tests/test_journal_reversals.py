"""Durable reversal queue: survives a restart, keeps no clear PAN, and drives the real IssuerLink."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from issuer_sim import accounts as accounts_mod
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink
from switch.journal import Journal, JournalError
from switch.journal_reversals import SqliteReversalStore

KEY = bytes(range(32))
PAN = "6212345678901234"
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"


def original(rrn: str = "632600000001", amount: int = 1000) -> dict[str, str]:
    return h2h.financial_request("sale", terminal_id="00000001", merchant_id="898310048140001", rrn=rrn,
                                 amount=amount, pan=PAN, expiry=EXP)


async def test_queue_survives_restart_and_hides_the_pan(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    j = await Journal.open(path, KEY)
    store = j.reversal_store()
    rev = h2h.reversal_for({**original(), "11": "000123", "7": "1122021530", "35": PAN + "D2512",
                            "52": "9CA4E8A0FA2C49B3"}, "98")
    rev["35"], rev["52"] = PAN + "D2512", "9CA4E8A0FA2C49B3"  # even if a caller leaves them in
    first = await store.add("cup", rev)
    second = await store.add("cup", h2h.reversal_for({**original("632600000002"), "11": "000124"}, "A0"))
    other = await store.add("visa", h2h.reversal_for({**original("632600000003"), "11": "000125"}, "98"))
    assert (await store.count("cup"), await store.count("visa"), await store.total_pending()) == (2, 1, 3)
    await j.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("r.db"))
    assert b"621234******1234" in blob  # the masked form is there, so the scan sees the rows
    for needle in (PAN, PAN[6:12], "9CA4E8A0FA2C49B3", PAN + "D2512"):
        assert needle.encode() not in blob

    j2 = await Journal.open(path, KEY)  # "restart"
    try:
        store2 = j2.reversal_store()
        pending = await store2.pending("cup")
        assert [i for i, _ in pending] == [first, second]
        msg = pending[0][1]
        assert msg["t"] == "0420" and msg["2"] == PAN and msg["39"] == "98" and msg["37"] == "632600000001"
        assert "35" not in msg and "52" not in msg
        await store2.ack(first, "00")
        await store2.ack(first, "25")  # a second ack changes nothing
        assert [i for i, _ in await store2.pending("cup")] == [second]
        assert [i for i, _ in await store2.pending("visa")] == [other]
        wrong = SqliteReversalStore(await Journal.open(path, b"x" * 32))
        with pytest.raises(JournalError, match="does not decrypt"):
            await wrong.pending("cup")
        await wrong._store.close()
    finally:
        await j2.close()


async def test_issuer_link_retries_a_queued_reversal_after_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "e2e.db")
    issuer = await start_issuer(accounts_mod.parse({"accounts": [{"pan": PAN, "expiry": EXP, "balance": 100_000}]}))
    try:
        # run 1: an approved sale, then the reversal is queued (durably) but the switch stops before sending it
        j1 = await Journal.open(path, KEY)
        link1 = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=5,
                                 reversal_store=j1.reversal_store()).start(wait=5)
        sale = original("632600000042", 2500)
        assert (await link1.request(sale))["39"] == "00"
        assert issuer.ledger.balance(PAN) == 97_500
        await link1.close()
        offline = IssuerLink("127.0.0.1", 1, name="cup", reversal_store=j1.reversal_store())  # never started
        await offline.reverse(sale, "98")
        await j1.close()

        # run 2: a new journal + link on the same file; the link retries the pending reversal when it comes up
        j2 = await Journal.open(path, KEY)
        store = j2.reversal_store()
        assert await store.count("cup") == 1
        link2 = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=5, reversal_store=store,
                                 reversal_retry=0.05).start(wait=5)
        try:
            for _ in range(200):
                if await store.count("cup") == 0:
                    break
                await asyncio.sleep(0.025)
            assert await store.count("cup") == 0
            assert issuer.ledger.balance(PAN) == 100_000  # the issuer really reversed the sale
        finally:
            await link2.close()
            await j2.close()
    finally:
        await issuer.close(close_ledger=True)
