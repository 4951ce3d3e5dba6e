"""The example files the README walks through stay true: they load, and their test keys and PVVs are right."""

from __future__ import annotations

from pathlib import Path

from _fastcore import crypto
from hsm_sim.lmk import Lmk
from issuer_sim.accounts import load as load_accounts
from switch.config import load_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
TEST_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def luhn_ok(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_example_accounts_load_with_the_documented_keys_and_pin() -> None:
    cfg = load_accounts(DOCS / "example-accounts.toml")
    lmk = Lmk()
    assert lmk.decrypt_key(cfg.keys["zpk"], "ZPK") == TEST_KEY
    assert lmk.decrypt_key(cfg.keys["pvk"], "PVK") == TEST_KEY
    assert lmk.decrypt_key(cfg.keys["imk_ac"], "IMK-AC") == TEST_KEY
    assert len(cfg.accounts) == 3
    for account in cfg.accounts.values():
        assert luhn_ok(account.pan), account.pan
        assert account.pin is not None and account.pin.method == "pvv"
        assert crypto.visa_pvv(TEST_KEY, account.pan, account.pin.pvki, "123456") == account.pin.pvv


def test_example_config_validates_and_shares_the_issuer_zpk() -> None:
    cfg = load_config(DOCS / "example-config.toml", [])
    accounts = load_accounts(DOCS / "example-accounts.toml")
    assert cfg.issuers["cup"].zpk_under_lmk == accounts.keys["zpk"]
