"""Key database persistence (atomic rewrite, reload, LMK binding) and the ``posswitch hsm`` CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from hsm_sim import cli
from hsm_sim.keystore import KeyStore, KeyStoreError, StoredKey
from hsm_sim.lmk import DEFAULT_LMK, LmkError, encrypt_under_lmk, kcv, load_lmk, set_odd_parity
from switch.hsm_client import HsmClient

LMK_CV = DEFAULT_LMK.check_value()
TMK = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")


def test_put_persists_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "db" / "keys.json"
    store = KeyStore(path, lmk_check=LMK_CV)
    store.put("001", StoredKey(encrypt_under_lmk(TMK, "TMK"), "002", kcv(TMK), "terminal 1"))
    store.put("a02", StoredKey("0A61E674E88C6A7E", "402", "D5D44F"))
    again = KeyStore(path, lmk_check=LMK_CV)
    assert again.items() == store.items() and "A02" in again
    assert again.get("001") == StoredKey(encrypt_under_lmk(TMK, "TMK"), "002", kcv(TMK), "terminal 1")
    assert TMK.hex().upper() not in path.read_text()  # only LMK-encrypted keys on disk
    assert again.delete("001") and not again.delete("001")
    assert "001" not in KeyStore(path, lmk_check=LMK_CV)
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temp files left


def test_failed_write_leaves_old_database_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path, lmk_check=LMK_CV)
    store.put("001", StoredKey("0A61E674E88C6A7E", "402", "D5D44F"))
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put("002", StoredKey("EABC38C2B2BB492F", "402", "000000"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]
    assert KeyStore(path, lmk_check=LMK_CV).items() == [("001", StoredKey("0A61E674E88C6A7E", "402", "D5D44F"))]


def test_database_bound_to_its_lmk_and_version(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyStore(path, lmk_check=LMK_CV).put("001", StoredKey("0A61E674E88C6A7E", "402", "D5D44F"))
    with pytest.raises(KeyStoreError, match="another LMK"):
        KeyStore(path, lmk_check="0" * 16)
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError, match="version"):
        KeyStore(path, lmk_check=LMK_CV)
    path.write_text("{not json")
    with pytest.raises(KeyStoreError):
        KeyStore(path)
    with pytest.raises(KeyStoreError):
        KeyStore(None).put("toolong", StoredKey("x", "000", ""))


def test_encrypt_under_lmk_rules() -> None:
    assert len(encrypt_under_lmk(TMK[:8], "TAK")) == 16  # single length: 16 hex, no scheme
    assert encrypt_under_lmk(TMK + TMK[:8], "ZPK").startswith("T")
    assert encrypt_under_lmk(TMK, "ZPK", "X").startswith("X")
    assert DEFAULT_LMK.decrypt_key(encrypt_under_lmk(TMK, "ZPK", "X"), "ZPK") == set_odd_parity(TMK)
    with pytest.raises(LmkError):
        encrypt_under_lmk(TMK, "NOPE")
    with pytest.raises(LmkError):
        encrypt_under_lmk(TMK[:5], "ZPK")


def test_form_key_cli_prints_key_under_lmk_not_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "keys.json"
    rc = cli.main(["form-key", "--type", "TMK", "--clear", TMK.hex(), "--keys", str(db), "--index", "T01"])
    out = capsys.readouterr().out
    assert rc == 0
    assert encrypt_under_lmk(TMK, "TMK") in out and kcv(TMK) in out
    assert TMK.hex().upper() not in out.upper()
    assert KeyStore(db).get("T01") == StoredKey(encrypt_under_lmk(TMK, "TMK"), "002", kcv(TMK), "")
    assert cli.main(["form-key", "--type", "TMK", "--clear", "zz"]) == 2
    assert cli.main(["form-key", "--type", "TMK", "--clear", TMK.hex(), "--index", "001"]) == 2


async def test_cli_server_subprocess_serves_stored_keys(tmp_path: Path) -> None:
    db = tmp_path / "keys.json"
    assert cli.main(["form-key", "--type", "ZPK", "--clear", TMK.hex(), "--keys", str(db), "--index", "001"]) == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hsm_sim", "--listen", "127.0.0.1:0", "--keys", str(db), "--header-len", "6",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("hsm listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        async with await HsmClient.connect("127.0.0.1", port, header_len=6) as c:
            assert (await c.kcv("K001", "ZPK")).hex().upper()[:6] == kcv(TMK)
    finally:
        proc.terminate()
        await proc.wait()


def test_cli_server_reports_a_bad_key_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "keys.json"
    db.write_text("{broken")
    root = logging.getLogger()
    saved = root.handlers[:], root.level  # cli.main configures logging globally
    try:
        assert cli.main(["--listen", "127.0.0.1:0", "--keys", str(db), "--no-uvloop", "--log-level", "ERROR"]) == 2
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "cannot read key database" in capsys.readouterr().err


def test_custom_lmk_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [f"{i:02X}" * 8 + f"{i + 0x40:02X}" * 8 for i in range(0x10, 0x24)]  # 20 test pairs
    lmk_file = tmp_path / "lmk.txt"
    lmk_file.write_text("# a test LMK\n" + "\n".join(pairs) + "\n")
    lmk = load_lmk(str(lmk_file))
    assert lmk.check_value() != LMK_CV
    assert cli.main(["form-key", "--type", "ZPK", "--clear", TMK.hex(), "--lmk", str(lmk_file)]) == 0
    out = capsys.readouterr().out
    assert encrypt_under_lmk(TMK, "ZPK", lmk=lmk) in out and encrypt_under_lmk(TMK, "ZPK") not in out
    assert lmk.decrypt_key(encrypt_under_lmk(TMK, "ZPK", lmk=lmk), "ZPK") == set_odd_parity(TMK)
    # a key database written under the default LMK is refused under another one
    db = tmp_path / "keys.json"
    assert cli.main(["form-key", "--type", "ZPK", "--clear", TMK.hex(), "--keys", str(db), "--index", "001"]) == 0
    rc = cli.main(["form-key", "--type", "ZPK", "--clear", TMK.hex(), "--keys", str(db), "--index", "002",
                   "--lmk", str(lmk_file)])  # fmt: skip
    assert rc == 2 and "another LMK" in capsys.readouterr().err
    lmk_file.write_text("\n".join(pairs[:19]))
    with pytest.raises(LmkError):
        load_lmk(str(lmk_file))
