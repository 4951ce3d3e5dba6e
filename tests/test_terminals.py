"""Terminal registry and the ``posswitch terminals`` CLI, on a real SQLite file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from switch import cli
from switch.config import load_config
from switch.journal import Journal, TxnRecord
from switch.terminals import RegistryError, TerminalRegistry, TerminalStore

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example-config.toml"
TID, MID = "00000001", "898310048140001"
TMK = "U" + "1A" * 16


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["terminals", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_store_validates_and_names_fields(tmp_path: Path) -> None:
    store = TerminalStore(str(tmp_path / "r.db"))
    try:
        store.add_merchant(MID, "shop")
        with pytest.raises(RegistryError, match="merchant_id: '898310048140001' already exists"):
            store.add_merchant(MID)
        with pytest.raises(RegistryError, match="merchant_id: expected 15 printable characters"):
            store.add_merchant("123")
        store.add_terminal(TID, MID, TMK)
        with pytest.raises(RegistryError, match="terminal_id: '00000001' already exists"):
            store.add_terminal(TID, MID, TMK)
        with pytest.raises(RegistryError, match="terminal_id: expected 8 printable"):
            store.add_terminal("1", MID, TMK)
        with pytest.raises(RegistryError, match="merchant_id: unknown merchant '898310048140009'"):
            store.add_terminal("00000002", "898310048140009", TMK)
        with pytest.raises(RegistryError, match="tmk_under_lmk"):
            store.add_terminal("00000002", MID, "not-a-key")
        with pytest.raises(RegistryError, match="key_mode: expected one of 001, 003, 004"):
            store.add_terminal("00000002", MID, TMK, key_mode="002")
        with pytest.raises(RegistryError, match="mac_algorithm"):
            store.add_terminal("00000002", MID, TMK, mac_algorithm="crc32")
        with pytest.raises(RegistryError, match="unknown terminal '00000009'"):
            store.set_status("00000009", MID, "disabled")
        t = store.get(TID, MID)
        assert t is not None and t.active and t.key_mode == "003" and t.batch == 1 and not t.signed_on
    finally:
        store.close()


async def test_registry_updates_memory_now_and_disk_in_background(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    reg = TerminalRegistry.open(path)
    try:
        t = reg.add(TID, MID, TMK, key_mode="004", mac_algorithm="x9.19")
        assert reg.get(TID, MID) is t and reg.get(TID, "898310048140002") is None
        reg.set_working_keys(TID, MID, "UPIK" + "0" * 28, "XMAK" + "1" * 12, "UTDK" + "2" * 28)
        reg.set_batch(TID, MID, 42)
        assert t.signed_on and t.batch == 42 and t.header_digit6 == "0"  # memory first
        await reg.flush()
        fresh = TerminalStore(path).get(TID, MID)
        assert fresh is not None and fresh.batch == 42 and fresh.signed_on
        assert (fresh.pik_under_lmk, fresh.mak_under_lmk) == ("UPIK" + "0" * 28, "XMAK" + "1" * 12)
        reg.require_resign(TID, MID)
        assert reg.get(TID, MID).header_digit6 == "3"
        await reg.flush()
        assert TerminalStore(path).get(TID, MID).resign_required
        reg.set_working_keys(TID, MID, "UA" + "0" * 30, "UB" + "0" * 14)
        assert reg.get(TID, MID).header_digit6 == "0" and reg.get(TID, MID).tdk_under_lmk is None
        with pytest.raises(RegistryError, match="unknown terminal"):
            reg.set_batch("00000009", MID, 1)
    finally:
        await reg.flush()
        reg.close()
    reopened = TerminalRegistry.open(path)
    try:
        assert reopened.get(TID, MID).pik_under_lmk == "UA" + "0" * 30  # state survives a restart
    finally:
        reopened.close()


async def test_get_notices_cli_changes_by_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    reg = TerminalRegistry.open(db, refresh_interval=0.0)
    lazy = TerminalRegistry.open(db, refresh_interval=3600.0)
    try:
        reg.add(TID, MID, TMK)
        lazy.reload()
        assert lazy.get(TID, MID).active  # first get() checks, then not for an hour
        assert run_cli(capsys, "--db", db, "disable", TID, MID)[0] == 0
        assert reg.get(TID, MID).status == "disabled"  # no explicit refresh call
        assert lazy.get(TID, MID).status == "active"  # within its interval: memory only
    finally:
        reg.close()
        lazy.close()


async def test_only_administrative_changes_trigger_a_reload(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "shared.db")
    reg = TerminalRegistry.open(db, refresh_interval=0.0)
    j = await Journal.open(db, b"k" * 32)  # the journal shares the file, as in `posswitch serve`
    try:
        reg.add(TID, MID, TMK)
        reg.refresh_if_changed()
        for i in range(5):
            await j.record(dict(terminal_id=TID, merchant_id=MID, txn_type="sale", amount=i))
        reg.set_batch(TID, MID, 9)
        reg.set_working_keys(TID, MID, "UA" + "0" * 30, "UB" + "0" * 14)
        await reg.flush()
        assert reg.refresh_if_changed() is False  # journal writes and runtime saves: no reload
        assert run_cli(capsys, "--db", db, "rotate-keys", TID, MID)[0] == 0
        assert reg.refresh_if_changed() is True
        assert reg.get(TID, MID).resign_required and reg.get(TID, MID).batch == 9
        assert reg.refresh_if_changed() is False
    finally:
        await j.close()
        await reg.flush()
        reg.close()


async def test_cli_changes_reach_the_running_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    reg = TerminalRegistry.open(db)
    try:
        reg.add(TID, MID, TMK)
        reg.set_working_keys(TID, MID, "UA" + "0" * 30, "UB" + "0" * 14)
        await reg.flush()
        reg.refresh_if_changed()  # picks up our own committed write (or not: either is fine)
        assert reg.refresh_if_changed() is False
        assert run_cli(capsys, "--db", db, "disable", TID, MID)[0] == 0
        assert reg.refresh_if_changed() is True
        assert reg.get(TID, MID).status == "disabled" and not reg.get(TID, MID).active
        run_cli(capsys, "--db", db, "enable", TID, MID)
        code, out, _ = run_cli(capsys, "--db", db, "rotate-keys", TID, MID, "--tmk-lmk", "U" + "B" * 32)
        assert code == 0 and "must sign on again" in out
        assert reg.refresh_if_changed() is True
        t = reg.get(TID, MID)
        assert t.active and t.resign_required and t.header_digit6 == "3"
        assert t.pik_under_lmk is None and not t.signed_on and t.tmk_under_lmk == "U" + "B" * 32
        run_cli(capsys, "--db", db, "disable-merchant", MID)
        reg.refresh_if_changed()
        assert reg.get(TID, MID).merchant_status == "disabled" and not reg.get(TID, MID).active
    finally:
        reg.close()


def test_cli_add_list_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    assert run_cli(capsys, "--db", db, "add-merchant", MID, "--name", "面馆")[0] == 0
    assert run_cli(capsys, "--db", db, "add", TID, MID, "--tmk-lmk", TMK, "--key-mode", "001")[0] == 0
    code, _, err = run_cli(capsys, "--db", db, "add", "00000002", "898310048140009", "--tmk-lmk", TMK)
    assert code == 2 and "merchant_id: unknown merchant '898310048140009'" in err
    code, _, err = run_cli(capsys, "--db", db, "add", "00000003", MID, "--tmk-lmk", "zz")
    assert code == 2 and "tmk_under_lmk" in err
    code, out, _ = run_cli(capsys, "--db", db, "list")
    assert code == 0 and TID in out and "001" in out and TMK not in out
    code, out, _ = run_cli(capsys, "--db", db, "list", "--json")
    row = json.loads(out)
    assert row["tid"] == TID and row["key_mode"] == "001" and row["tmk_under_lmk"] == TMK[:5] + "…"
    code, out, _ = run_cli(capsys, "--db", db, "merchants")
    assert MID in out and "面馆" in out
    code, _, err = run_cli(capsys, "list")
    assert code == 2 and "--db" in err


def test_import_from_config_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")
    for _ in range(2):
        code, out, _ = run_cli(capsys, "--config", str(EXAMPLE), "--set", f'journal.path="{db}"', "import")
        assert code == 0 and "imported 1 merchants, 2 terminals" in out
        run_cli(capsys, "--db", db, "disable", "00000002", MID)
    store = TerminalStore(db)
    try:
        terms = {t.tid: t for t in store.terminals()}
        assert terms["00000002"].mac_algorithm == "x9.19" and terms["00000002"].key_mode == "004"
        assert terms["00000002"].status == "disabled"  # import does not undo an operator's disable
        assert not terms["00000001"].resign_required
        assert terms["00000001"].tmk_under_lmk == load_config(EXAMPLE).terminals[0].tmk_under_lmk
    finally:
        store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT version FROM schema_version WHERE component='registry'").fetchone() == (2,)
    finally:
        conn.close()


def test_changed_tmk_in_config_forces_sign_on(tmp_path: Path) -> None:
    store = TerminalStore(str(tmp_path / "r.db"))
    try:
        store.add_merchant(MID)
        store.add_terminal(TID, MID, TMK)
        store.add_terminal(TID, MID, TMK, update=True)
        assert not store.get(TID, MID).resign_required
        store.add_terminal(TID, MID, "U" + "C" * 32, update=True)
        assert store.get(TID, MID).resign_required and store.get(TID, MID).tmk_under_lmk == "U" + "C" * 32
    finally:
        store.close()


def test_cli_report_reads_the_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "r.db")

    async def fill() -> TxnRecord | None:
        j = await Journal.open(db, b"k" * 32)
        try:
            for amount, kind in ((10_000, "debit"), (50_000, "credit")):
                txn = await j.record(dict(terminal_id=TID, merchant_id=MID, txn_type="sale", amount=amount,
                                          card_type=kind, payment_method="chip"))
                await j.commit_approval(txn, j.next_rrn(), "000001")
            return await j.get(txn)
        finally:
            await j.close()

    row = asyncio.run(fill())
    assert row is not None

    day = dt.datetime.fromtimestamp(row.created_at, dt.timezone(dt.timedelta(hours=8))).date().isoformat()
    code, out, err = run_cli(capsys, "--db", db, "report", "--date", day, "--format", "csv")
    assert code == 0, err
    # debit 0.38 % of 100.00 = 38 fen, credit 0.60 % of 500.00 = 300 fen
    assert out.splitlines()[1] == f"{day},{MID},2,60000,0,0,60000,338,59662"
    code, _, err = run_cli(capsys, "--db", db, "report", "--date", "yesterday")
    assert code == 2 and "Invalid isoformat" in err


def test_cli_txns_finds_rows_by_rrn_card_and_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(EXAMPLE)
    db = str(tmp_path / "t.db")
    pan = "6212345678901234567"

    async def fill() -> list[str]:
        j = await Journal.open(db, cfg.journal.pan_hash_key)
        rrns = []
        try:
            for i, card in enumerate((pan, "6222020000000000001", pan)):
                txn = await j.record(dict(terminal_id=TID, merchant_id=MID, txn_type="sale", amount=1234 + i,
                                          stan=i + 1, batch=7 if i < 2 else 8, pan=card))
                rrns.append(j.next_rrn())
                await j.commit_approval(txn, rrns[-1], f"00000{i}")
        finally:
            await j.close()
        return rrns

    rrns = asyncio.run(fill())
    base = ["--config", str(EXAMPLE), "--set", f'journal.path="{db}"', "txns"]
    code, out, _ = run_cli(capsys, *base, "--rrn", rrns[1])
    assert code == 0 and "622202*********0001" in out and "12.35" in out and out.count("\n") == 2
    code, out, _ = run_cli(capsys, *base, "--pan", pan, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["rrn"] for r in rows] == [rrns[2], rrns[0]] and pan not in out
    code, out, _ = run_cli(capsys, *base, "--terminal", TID, "--batch", "7", "--state", "approved")
    assert code == 0 and out.count("\n") == 3
    code, _, err = run_cli(capsys, "--db", db, "txns", "--pan", pan)
    assert code == 2 and "--pan" in err
